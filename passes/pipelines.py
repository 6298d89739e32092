"""Named pipelines registered like passes."""
from dccomp.registry import NamedPipeline

__all__ = ["DEEP_COMPRESSION"]

#: Deep Compression (ICLR 2016, Fig. 1) with defaults tuned on LeNet-300-100 / Fashion-MNIST: iterative
#: magnitude pruning with retraining (NIPS'15 §3.3) to 94.5% sparsity with one global threshold (small, sensitive
#: layers such as conv1 or the classifier keep more weights, as the paper's per-layer choices do), k-means weight
#: sharing (linear init; 4 bits fc, 8 bits conv), centroid fine-tuning (Eq. 3), then relative sparse indices +
#: canonical Huffman coding. Learning rates are 1/5 to 1/50 of the dense rate (the paper: 1/10 for LeNet).
DEEP_COMPRESSION = NamedPipeline(
    "deep-compression",
    "prune{sparsity=0.945,scope=global,steps=3,epochs=1,lr=0.01},retrain{epochs=2,lr=0.005},"
    'cluster{bits=4,layers={"conv.*":8}},retrain{lr=0.001},huffman',
    "iterative global prune + retrain, cluster (4-bit fc, 8-bit conv), centroid retrain, Huffman",
)
