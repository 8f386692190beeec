import json, time
from hpo.cli import main

def test_x(tiny_mnist_dir, tiny_study, capsys, tiny_mnist):
    for i in range(2):
        t=time.perf_counter()
        rc = main(["trial", str(tiny_study), "--data-dir", str(tiny_mnist_dir), "--json"])
        out = capsys.readouterr()
        print(rc, time.perf_counter()-t, file=open("/tmp/scratch/log","a"))
        r = json.loads(out.out)
        print(json.dumps({k: r[k] for k in ("alpha","timings","data_sha256","worst_group","faithfulness_error")}), file=open("/tmp/scratch/log","a"))
        print(json.dumps(r["models"]["original"]["val"]), json.dumps(r["models"]["oracle"]["val"]), file=open("/tmp/scratch/log","a"))
    assert r["data_sha256"] == tiny_mnist.sha256
