import sys, torch, bmojo
sys.argv=["x"]
import count_ops_cpu as c
from bench_model import MATCHED
c.count_launches_as_one()
c.force("state", True); c.force("pointwise", True)
torch.manual_seed(0)
L=int(sys.argv[1]) if len(sys.argv)>1 else 2048
config = bmojo.preset_config("bmojo-130m", **dict(MATCHED, num_hidden_layers=1))
model = bmojo.BMojoForCausalLM(config).eval()
ids = torch.randint(5, config.vocab_size, (1, 2048))
for decode in (False, True):
    cnt = c.count(model, ids, decode)
    print("decode" if decode else "prefill", sum(cnt.sites.values()))
    for key, n in cnt.sites.most_common(45):
        print(f"  {n:5d}  {key}  {dict(cnt.ops[key].most_common(4))}")
