"""Named pipelines registered like passes."""
from dccomp.registry import NamedPipeline

__all__ = ["DEEP_COMPRESSION"]

#: Deep Compression (ICLR 2016, Fig. 1) with defaults tuned on LeNet-300-100 / Fashion-MNIST: iterative
#: magnitude pruning with retraining (NIPS'15 §3.3), k-means weight sharing (linear init), centroid fine-tuning
#: (Eq. 3), then relative sparse indices + canonical Huffman coding.
DEEP_COMPRESSION = NamedPipeline(
    "deep-compression",
    "prune{sparsity=0.92,layers={\"fc3\":0.75,\"conv1\":0.35,\"conv2\":0.85},steps=3,epochs=1,lr=0.01},"
    "retrain{epochs=2,lr=0.005},cluster{bits=5},retrain{epochs=1,lr=0.001},huffman",
    "iterative prune + retrain, cluster (5-bit fc, 8-bit conv), centroid retrain, Huffman",
)
