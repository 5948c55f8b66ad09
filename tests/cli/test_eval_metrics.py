"""`brick eval --metric`: stability and mfa on the tiny host, with an assembly, and clean errors."""

import json

from registry import Registry
from tests.conftest import labelled_brick

TORCH_THREADS = 1


def test_eval_metric_stability_host_and_amplified_assembly(run, registry_dir, tiny_host, tiny_host_dir, tmp_path):
    Registry(registry_dir).publish(labelled_brick(tiny_host, gain=1.0, name="amp"))
    plot = tmp_path / "st.png"
    out = run("eval", "--metric", "stability", "amp:4", "--host", str(tiny_host_dir), "--opt", "texts=2",
              "--opt", "max-tokens=8", "--json", "--plot", str(plot))
    report = json.loads(out)
    assert report["metric"] == "stability" and len(report["assembly"]["lambda"]) == tiny_host.n_layers
    assert report["assembly"]["bricks"] == [{"brick": "amp", "gain": 4.0}]
    assert report["figures"]["stability"] == str(plot) and plot.is_file()
    table = run("eval", "--metric", "stability", "--host", str(tiny_host_dir), "--opt", "texts=1",
                "--plot", str(tmp_path / "host.png"))
    assert "lambda host" in table and "plot written" in table and "assembly" not in table


def test_eval_metric_mfa_table(run, tiny_host_dir, tmp_path):
    out = run("eval", "--metric", "mfa", "--host", str(tiny_host_dir), "--opt", "samplings=3",
              "--opt", "nodes_per_layer=6", "--opt", "centers=32", "--plot", str(tmp_path / "mfa.png"))
    assert "random_init" in out and "degree of emergence" in out and (tmp_path / "mfa.png").is_file()


def test_eval_metric_errors_and_help(run, tiny_host_dir):
    err = run("eval", "--metric", "stability", "--host", str(tiny_host_dir), "--opt", "epss=1", code=1)
    assert "metric stability has no option 'epss'; did you mean 'eps'" in err
    err = run("eval", "--metric", "stabilty", code=1)
    assert "unknown metric 'stabilty'" in err and ("mfa, stability" in err or "stability, mfa" in err)
    err = run("eval", "--metric", "stability", "x:big", "--host", str(tiny_host_dir), code=1)
    assert "gain 'big' is not a number" in err
    assert "Missing argument" in run("eval", code=2)
    assert "--opt and --plot go with --metric" in run("eval", "b", "--opt", "eps=1", code=2)
    help_text = run("eval", "--help")
    assert "stability: " in help_text and "arxiv.org/abs/2402.09099" in help_text and "nodes_per_layer" in help_text
