"""RoI heads: box and mask heads on aligned RoI features."""
