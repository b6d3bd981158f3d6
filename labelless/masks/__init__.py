"""Class-agnostic masks: produce (DINO k-means, SAM, classical), read (SA-1B, COCO),
store (COCO RLE per mask, one JSON per image), stream, score (oracle mIoU) and show."""
