"""Same inputs and seed give the same file bytes, with torch's default (multi-threaded) CPU kernels."""
import torch

import dccomp


def test_retraining_clustered_weights_is_deterministic():
    """Same inputs and seed, same file bytes: the centroid gradient (Eq. 3) must not depend on thread timing
    (a multi-threaded scatter-add would make float sums run in varying order)."""
    import hashlib

    from dccomp.format import plan_file
    from dccomp.models import LeNet300100

    g = torch.Generator().manual_seed(0)
    train = (torch.randn(2000, 1, 28, 28, generator=g), torch.randint(0, 10, (2000,), generator=g))
    torch.manual_seed(0)
    model = LeNet300100()  # layers large enough for torch's CPU kernels to go multi-threaded
    digests = set()
    for _ in range(3):
        c = dccomp.compile(model, "cluster{bits=4},retrain,huffman", train_data=train,
                           seed=0)
        digests.add(hashlib.sha256(plan_file(c.ir).to_bytes()).hexdigest())
    assert len(digests) == 1
