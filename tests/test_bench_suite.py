"""The benchmark suite file: parsing, expansion, validation and the work model."""

from __future__ import annotations

import pytest

from cnnfast.bench.suite import SuiteError, load_suite, select_cases


def _write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_packaged_suite_loads_and_has_the_issue_cases():
    cases = {c.name: c for c in load_suite()}
    for name in ("fmnist.conv1.n64", "fmnist.conv1.n128", "fmnist.conv2.n128",
                 "fmnist.pool.n64", "resnet.conv3x3.c64", "resnet.conv3x3.c128",
                 "resnet.conv3x3.c256", "resnet.conv1x1", "resnet.stem7x7",
                 "depthwise3x3", "conv1d.k9", "conv3d.k3", "conv_transpose.k4s2",
                 "max_pool.2x2s2", "max_pool.3x3s2", "avg_pool.2x2s2", "avg_pool.3x3s2",
                 "global_avg_pool"):
        assert name in cases, name
    assert cases["fmnist.conv2.n64"].y_shape == (64, 64, 11, 11)
    assert cases["fmnist.pool.n64"].y_shape == (64, 64, 13, 13)
    assert cases["resnet.stem7x7"].y_shape == (4, 64, 112, 112)
    assert cases["conv_transpose.k4s2"].y_shape == (16, 64, 32, 32)
    assert cases["global_avg_pool"].y_shape == (8, 512, 1, 1)
    assert cases["conv3d.k3"].rank == 3 and cases["conv1d.k9"].rank == 1
    quick = [c.name for c in select_cases(list(cases.values()), quick=True)]
    assert 5 <= len(quick) < len(cases) and "fmnist.conv1.n128" not in quick


def test_conv_flops_model():
    cases = {c.name: c for c in load_suite()}
    c = cases["resnet.conv3x3.c64"]  # 2 * N * C_out * H_out * W_out * C_in * k * k
    assert c.flops("forward") == 2 * 8 * 64 * 56 * 56 * 64 * 9
    assert c.flops("backward_input") == c.flops("backward_weight") == c.flops("forward")
    dw = cases["depthwise3x3"]  # C_in / groups = 1
    assert dw.flops("forward") == 2 * 8 * 128 * 56 * 56 * 1 * 9
    # Transposed conv: the conv from its 64x32x32 output back to its 128x16x16 input.
    t = cases["conv_transpose.k4s2"]
    assert t.flops("forward") == 2 * 16 * 128 * 16 * 16 * 64 * 16
    assert t.bytes("forward") is None and c.bytes("forward") is None


def test_pool_bytes_model():
    cases = {c.name: c for c in load_suite()}
    mp = cases["max_pool.2x2s2"]
    x, y = 8 * 64 * 112 * 112, 8 * 64 * 56 * 56
    assert mp.bytes("forward") == (x + y) * 4 + y * 8  # with the int64 indices
    assert mp.bytes("backward") == (y + x) * 4 + y * 8
    ap = cases["avg_pool.2x2s2"]
    assert ap.bytes("forward") == ap.bytes("backward") == (x + y) * 4
    assert mp.flops("forward") is None


def test_batch_lists_expand_and_quick_lists_pick(tmp_path):
    cases = load_suite(_write(tmp_path, """
[[case]]
name = "a"
kind = "avg_pool"
batch = [1, 4]
x = [2, 6, 6]
kernel = 2
ops = ["forward"]
quick = [4]
"""))
    assert [(c.name, c.x_shape, c.quick) for c in cases] == [
        ("a.n1", (1, 2, 6, 6), False), ("a.n4", (4, 2, 6, 6), True)]
    assert cases[0].group == "avg_pool"  # the kind when no group is given


def test_select_by_substring_glob_and_group():
    cases = load_suite()
    names = lambda **kw: {c.name for c in select_cases(cases, **kw)}  # noqa: E731
    assert names(shapes=["conv3x3"]) == {"resnet.conv3x3.c64", "resnet.conv3x3.c128",
                                         "resnet.conv3x3.c256"}
    assert names(shapes=["*.n128"]) == {"fmnist.conv1.n128", "fmnist.pool.n128",
                                        "fmnist.conv2.n128"}
    assert names(shapes=["pool"]) >= {"max_pool.2x2s2", "fmnist.pool.n64",
                                      "global_avg_pool"}
    assert names(shapes=["fashion-mnist"], quick=True) == {
        "fmnist.conv1.n64", "fmnist.pool.n64", "fmnist.conv2.n64"}


BASE = '''
[[case]]
name = "c"
kind = "conv"
x = [3, 8, 8]
weight = [4, 3, 3, 3]
ops = ["forward"]
'''


@pytest.mark.parametrize("extra, replace, message", [
    ("", ("kind = \"conv\"", "kind = \"deconv\""), "kind='deconv'"),
    ("stides = 2\n", None, "unknown keys ['stides']"),
    ("", ("ops = [\"forward\"]", "ops = [\"backward\"]"), "ops=['backward']"),
    ("", ("weight = [4, 3, 3, 3]", "weight = [4, 3, 3]"), "weight=[4, 3, 3]"),
    ("", ("x = [3, 8, 8]", "x = [3, 0, 8]"), "x=[3, 0, 8]"),
    ("batch = 0\n", None, "batch=0"),
    ("quick = [7]\n", None, "quick=[7]"),
    ("", ("weight = [4, 3, 3, 3]", "weight = [4, 3, 9, 9]"), "larger than the padded"),
    ("groups = 2\n", None, "groups=2 does not divide"),
    ("", ("name = \"c\"", "name = 5"), "name=5 must be a str"),
])
def test_bad_cases_name_case_and_key(tmp_path, extra, replace, message):
    text = BASE + extra
    if replace:
        text = text.replace(*replace)
    with pytest.raises(SuiteError, match="case #1") as info:
        load_suite(_write(tmp_path, text))
    assert message in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "nope.toml")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(_write(tmp_path, "[[case]\n"))
    with pytest.raises(SuiteError, match="no \\[\\[case\\]\\] tables"):
        load_suite(_write(tmp_path, "title = 'x'\n"))
    with pytest.raises(SuiteError, match="appears twice"):
        load_suite(_write(tmp_path, BASE + BASE))
