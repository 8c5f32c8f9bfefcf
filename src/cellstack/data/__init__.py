"""Data: formats (RLE, Sartorius CSV, LIVECell COCO, label images), synthetic cells, folds."""
