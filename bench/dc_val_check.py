"""How much does the paper's ``deep-compression`` pipeline lose on the held-out validation split that
``allocate`` checks its budget on? Same dense model as bench/compression.py (trained on the 90% training part),
``deep-compression`` retrained on that part only, top-1 on the validation split and on the test set.

    python bench/dc_val_check.py SEED      # writes bench/results/compression_dc_val_lenet300_s{SEED}.json
"""
import sys, json, torch
torch.set_num_threads(1)
sys.path.insert(0, "bench")
from compression import dense_holdout
import dccomp
from dccomp.format import file_nbytes
from dccomp.data import get_dataset
from dccomp.passes.allocate import holdout_split
from torch.utils.data import Subset
train = get_dataset("fashion-mnist","train"); test=get_dataset("fashion-mnist","test")
seed = int(sys.argv[1])
m, _ = dense_holdout("lenet-300-100","fashion-mnist",train,test,seed,0.1)
tr, va = holdout_split(len(train),0.1,seed)
t = dccomp.Trainer(Subset(train, tr.tolist()), test, batch_size=128)
val = Subset(train, va.tolist())
d_val, d_test = t.evaluate(m, val)["accuracy"], t.evaluate(m)["accuracy"]
c = dccomp.compile(m, "deep-compression", example_inputs=torch.zeros(1,1,28,28), trainer=t, seed=seed)
c_val, c_test = t.evaluate(c, val)["accuracy"], t.evaluate(c)["accuracy"]
out = {"seed": seed, "pipeline": "deep-compression retrained on the 90% training part", "dense_val": d_val, "dense_test": d_test,
       "val": c_val, "test": c_test, "val_drop_points": 100*(d_val-c_val), "test_drop_points": 100*(d_test-c_test),
       "file_bytes": file_nbytes(c.ir),
       "density": {w.name: float(w.mask.float().mean()) for w in c.ir.weights.values()}}
print(json.dumps(out))
json.dump(out, open(f"bench/results/compression_dc_val_lenet300_s{seed}.json", "w"), indent=1)
