"""Named pipelines registered like passes."""
from dccomp.registry import NamedPipeline

__all__ = ["DEEP_COMPRESSION", "DEEP_COMPRESSION_AUTO"]

#: Deep Compression (ICLR 2016, Fig. 1) with defaults tuned on LeNet-300-100 / Fashion-MNIST: gradual (AGP) magnitude
#: pruning in 4 steps with retraining between them (NIPS'15 §3.3) to 94.5% sparsity under one global threshold
#: (small, sensitive layers such as conv1 or the classifier keep more weights, as the paper's per-layer choices
#: do), retraining with a cosine learning rate, k-means weight sharing (linear init; 4 bits fc, 8 bits conv),
#: centroid fine-tuning (Eq. 3), then relative sparse indices (width chosen per layer) + canonical Huffman coding.
#: Learning rates are 1/5 to 1/25 of the dense rate (the paper: 1/10 for LeNet).
DEEP_COMPRESSION = NamedPipeline(
    "deep-compression",
    "prune{sparsity=0.945,scope=global,steps=4,schedule=agp,epochs=2,lr=0.01},retrain{epochs=6,lr=0.01,schedule=cosine},"
    'cluster{bits=4,layers={"conv.*":8}},retrain{epochs=2,lr=0.002,schedule=cosine},huffman{index_bits=auto}',
    "gradual global prune + retrain, cluster (4-bit fc, 8-bit conv), centroid retrain, Huffman",
)

#: Deep Compression with per-layer sparsity and bits chosen for an accuracy budget of 0.5 point of top-1 on a
#: held-out 10% of the training data (``allocate``: sensitivity curves + file-byte estimates, then the same
#: prune/retrain/cluster/retrain schedule as ``deep-compression``), then Huffman coding.
DEEP_COMPRESSION_AUTO = NamedPipeline(
    "deep-compression-auto",
    "allocate{budget=0.5},huffman{index_bits=auto}",
    "per-layer sparsity/bits for a 0.5-point budget (sensitivity + size), iterative prune/retrain/cluster, Huffman",
)
