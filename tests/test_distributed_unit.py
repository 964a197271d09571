"""cnnfast.distributed without MPI: how a batch is split over the ranks, the flat
gradient buffer, the single-process communicator (the same interface checks the MPI
one passes under mpiexec, tests/test_distributed_mpi.py), and DistributedTrainer on
one process against the plain Trainer."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from cnnfast import distributed as D
from cnnfast.distributed import comm as comm_module
from cnnfast.nn import training as T

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mpi_scripts"))
from comm_checks import check_communicator  # noqa: E402
from common import make_optimizer, params, tiny_data, tiny_model  # noqa: E402


# ----------------------------------------------------------------------------- shards


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_local_slice_partitions_the_batch(size):
    for n in range(0, 23):
        parts = [D.local_slice(n, r, size) for r in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        for (a, b), (c, _) in zip(parts, parts[1:]):
            assert b == c  # contiguous, in rank order
        sizes = [b - a for a, b in parts]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_local_slice_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank=2"):
        D.local_slice(8, 2, 2)


class _RankOf(D.SingleProcessComm):
    """Rank ``rank`` of ``size`` whose collectives are the identity: enough to see
    which samples each rank trains on, not to train. Every rank is built alike, so
    root's training state is ``states()``, this rank's."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size
        self.states = None

    def bcast_object(self, obj, root=0):
        return self.states()


def _inputs_per_step(trainer, images, labels, epochs=2):
    """The inputs ``trainer.model.forward`` saw, one list per training step."""
    seen, forward, step = [], trainer.model.forward, trainer.train_step

    def recording_forward(x, training=False):
        seen[-1].append(np.array(x))
        return forward(x, training=training)

    def recording_step(x, y):
        seen.append([])
        return step(x, y)

    trainer.model.forward, trainer.train_step = recording_forward, recording_step
    for _ in range(epochs):
        trainer.train_epoch(images, labels, progress=False)
    return [np.concatenate(s) if s else np.zeros((0,) + images.shape[1:]) for s in seen]


@pytest.mark.parametrize("n,batch,size", [(21, 8, 2), (17, 8, 2), (10, 4, 3), (5, 8, 4)])
def test_the_ranks_split_the_plain_trainers_batches(n, batch, size):
    # The one sharding rule: the same seed gives every rank the plain Trainer's
    # global batches, and rank r trains on local_slice r of each, in rank order.
    images, labels = tiny_data(n)
    plain = _inputs_per_step(T.Trainer(tiny_model("dense"), make_optimizer("sgd"),
                                       batch_size=batch, seed=11), images, labels)
    ranks = []
    for r in range(size):
        comm = _RankOf(r, size)
        trainer = D.DistributedTrainer(tiny_model("dense"), make_optimizer("sgd"),
                                       batch_size=batch, seed=11, comm=comm)
        comm.states = trainer.state
        ranks.append(_inputs_per_step(trainer, images, labels))
    assert all(len(steps) == len(plain) for steps in ranks)  # the same collectives
    for b, whole in enumerate(plain):
        parts = [steps[b] for steps in ranks]
        for r, part in enumerate(parts):
            lo, hi = D.local_slice(len(whole), r, size)
            np.testing.assert_array_equal(part, whole[lo:hi])
        np.testing.assert_array_equal(np.concatenate(parts), whole)


# ----------------------------------------------------------------------------- flat buffers


def _model_with_grads(kind="conv"):
    model = tiny_model(kind, dtype="float32")
    images, labels = tiny_data(6)
    logits = model.forward(images.astype(np.float32) / 255, training=True)
    _, grad = T.softmax_cross_entropy(logits, labels)
    model.backward(grad)
    return model


def test_flatten_unflatten_round_trip():
    model = _model_with_grads()
    layout, total = D.grad_layout(model)
    assert total == model.param_count(trainable=True)
    grads = {(l.name, p): l.grads[p].copy() for l, p, *_ in layout}
    buf = D.flatten_grads(model, extra=2)
    assert buf.shape == (total + 2,) and buf.dtype == np.float32
    buf[:total] *= 3
    D.unflatten_into(model, buf)
    for (name, p), g in grads.items():
        got = model.get_layer(name).grads[p]
        np.testing.assert_array_equal(got, 3 * g)
        assert np.shares_memory(got, buf)  # views, no copy


def test_flatten_scale_reuse_and_zero():
    model = _model_with_grads("dense")
    plain = D.flatten_grads(model)
    out = np.full_like(plain, np.nan)
    assert D.flatten_grads(model, out=out, scale=0.25) is out
    np.testing.assert_allclose(out, plain * 0.25, rtol=1e-7)
    np.testing.assert_array_equal(D.flatten_grads(model, scale=0), 0)
    with pytest.raises(ValueError, match="expected"):
        D.flatten_grads(model, out=np.zeros(3, np.float32))


def test_flatten_without_backward_is_an_error():
    model = tiny_model("dense")
    with pytest.raises(RuntimeError, match="no gradient for dense"):
        D.flatten_grads(model)
    with pytest.raises(ValueError, match="too short"):
        D.unflatten_into(model, np.zeros(3))


def test_frozen_layers_are_not_in_the_buffer():
    model = _model_with_grads("dense")
    full = D.grad_layout(model)[1]
    model.freeze(["dense"])
    assert D.grad_layout(model)[1] == full - model.get_layer("dense").param_count()


def test_step_validates_counts():
    model = _model_with_grads("dense")
    step = D.DistributedStep(model, D.SingleProcessComm())
    for n_local, n_global in ((3, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="n_local"):
            step.reduce(n_local, n_global)
    loss, correct, stop = step.reduce(6, 6, loss=1.5, correct=4, stop=True)
    assert (loss, correct, stop) == (pytest.approx(1.5), 4, True)
    assert step.steps == 1 and step.comm_time >= 0


# ----------------------------------------------------------------------------- communicator


def test_single_process_comm_passes_the_interface_checks():
    check_communicator(D.SingleProcessComm())


def test_get_communicator():
    assert isinstance(D.get_communicator("single"), D.SingleProcessComm)
    with pytest.raises(ValueError, match="kind='bogus'"):
        D.get_communicator("bogus")


def test_without_mpi4py_the_mpi_communicator_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if absent
    with pytest.raises(RuntimeError, match="pip install"):
        D.get_communicator("mpi")
    for var in comm_module._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert isinstance(D.get_communicator("auto"), D.SingleProcessComm)
    monkeypatch.setenv("PMI_RANK", "0")  # under mpiexec: no silent single process
    with pytest.raises(RuntimeError, match="mpi4py"):
        D.get_communicator("auto")


def test_cuda_aware_override(monkeypatch):
    monkeypatch.setenv("CNNFAST_MPI_CUDA_AWARE", "1")
    assert D.mpi_cuda_aware() is True
    monkeypatch.setenv("CNNFAST_MPI_CUDA_AWARE", "0")
    assert D.mpi_cuda_aware() is False
    monkeypatch.setenv("CNNFAST_MPI_CUDA_AWARE", "yes")
    with pytest.raises(ValueError, match="expected 0 or 1"):
        D.mpi_cuda_aware()


def test_run_guarded_single_process_is_a_plain_call():
    assert D.run_guarded(D.SingleProcessComm(), lambda a: a + 1, 1) == 2
    with pytest.raises(KeyError):  # no abort with one process: the error propagates
        D.run_guarded(D.SingleProcessComm(), lambda: {}["x"])


def test_configure_threads(monkeypatch):
    from cnnfast.threads import get_num_threads, set_num_threads

    before = get_num_threads()
    try:
        assert D.configure_threads(D.SingleProcessComm(), requested=1) == 1
    finally:
        set_num_threads(before)


# ----------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("kind,opt", [("conv", "adam"), ("dense", "sgd")])
def test_one_rank_trainer_equals_the_plain_trainer(kind, opt):
    images, labels = tiny_data(21)  # batches 8, 8, 5
    runs = []
    for cls in (T.Trainer, D.DistributedTrainer):
        model = tiny_model(kind, dtype="float32")
        trainer = cls(model, make_optimizer(opt), batch_size=8, seed=3)
        hist = []
        for _ in range(2):
            m = trainer.train_epoch(images, labels, progress=False)
            m.update(trainer.evaluate(images, labels, batch_size=5))
            hist.append(m)
        runs.append((params(model), hist))
    (pa, ha), (pb, hb) = runs
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    for a, b in zip(ha, hb):
        # the loss travels in the float32 gradient buffer: equal to float32 precision
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["train_acc"] == b["train_acc"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
        np.testing.assert_array_equal(a["confusion"], b["confusion"])


def test_stop_requested_reads_the_agreed_flag():
    images, labels = tiny_data(21)
    trainer = D.DistributedTrainer(tiny_model("dense"), make_optimizer("sgd"), batch_size=8)
    trainer.stop_requested = True  # a signal handler: not agreed until the next step
    assert trainer.stop_requested is False
    trainer.train_step(*_float_batch(images[:8], labels[:8]))
    assert trainer.stop_requested is True
    assert trainer.train_epoch(images, labels, progress=False) == {"interrupted": True}
    trainer.stop_requested = False
    assert trainer.stop_requested is False


def _float_batch(images, labels):
    return images.astype(np.float64) / 255, labels


# ----------------------------------------------------------------------------- cost model


def _allreduce_model():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "allreduce_model.py")
    spec = importlib.util.spec_from_file_location("allreduce_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cost_model_counts_the_cnn_parameters_and_applies_the_ring_formula():
    m = _allreduce_model()
    counts = m.cnn_param_count()
    assert counts["flatten"] == 1600
    assert counts["total"] == T.cnn_model().param_count() == 243_786
    assert m.ring_allreduce_s(1e6, 1, 10e9, 1e-5) == 0
    # 2 machines: one 500 kB chunk each way twice = 1 MB at 1.25 GB/s, + 2 latencies
    assert m.ring_allreduce_s(1e6, 2, 10e9, 1e-5) == pytest.approx(0.8e-3 + 2e-5)
    text = m.tables(7.0)
    assert "| 64 |" in text and "975,144 bytes" in text
