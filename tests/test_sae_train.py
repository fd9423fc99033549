"""`twofiles sae train` end to end on a tiny saved model: training lowers the reconstruction
error, TopK's L0 is k, CE-loss recovered (formula and splice), exact resume, dead features, bad
input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tiny_models import TEXT, random_model, tiny_tokenizer
from twofiles.cli import main
from twofiles.sae.activations import ActivationBuffer, collect, token_windows
from twofiles.sae.metrics import ce_loss_recovered, explained_variance, spliced_losses
from twofiles.sae.model import SAEConfig, SparseAutoencoder, load_sae
from twofiles.sae.train import SAETrainConfig, SAETrainer, fold_scale

# a few different lines, so the tail split holds out text the model's windows have not seen
CORPUS = "\n".join(
    f"{w} {i} the question, whether {w} nobler in the mind {i * 7 % 13}"
    for i, w in enumerate(["to be", "or not", "that is", "'tis", "suffer"] * 60)
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from twofiles.artifact import save_model

    tok = tiny_tokenizer()
    model = random_model(tok, max_seq_len=64)
    d = tmp_path_factory.mktemp("tiny")
    (d / "corpus.txt").write_text(CORPUS)
    return {
        "model": str(save_model(d / "model.safetensors", model, tok)),
        "corpus": str(d / "corpus.txt"),
        "tok": tok,
        "net": model,
    }


def sae_train(capsys, tiny, out, *extra: str) -> tuple[int, dict, str]:
    argv = ["sae", "train", tiny["model"], "--data", tiny["corpus"], "--out", str(out)]
    argv += ["--context", "32", "--batch-tokens", "128", "--eval-tokens", "256", "--k", "4"]
    argv += ["--buffer-contexts", "8", "--no-progress", "--threads", "1", "--json", *extra]
    rc = main(argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    summary = json.loads(lines[-1]) if rc == 0 and lines else {}
    return rc, summary, captured.err


@pytest.mark.slow
def test_training_lowers_the_error_and_topk_l0_is_k(tmp_path, capsys, tiny):
    rc, s, err = sae_train(
        capsys, tiny, tmp_path / "run", "--layer", "1", "--tokens", "6400", "--lr", "3e-3"
    )
    assert rc == 0, err
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mse = [r["mse"] for r in recs if "mse" in r]
    assert len(mse) == 50
    assert sum(mse[-5:]) / 5 < 0.5 * sum(mse[:5]) / 5
    assert s["l0"] == 4.0 and all(r["l0"] == 4.0 for r in recs if "mse" in r)
    assert s["explained_variance"] > 0.5
    assert s["tokens"] == 6400 and s["steps"] == 50
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["ce_loss_recovered"] == s["ce_loss_recovered"]
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "report.md").is_file()
    sae = load_sae(tmp_path / "run")
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.d_sae == 256
    assert sae.cfg.extra["tokens"] == 6400 and sae.cfg.extra["metrics"]["l0"] == 4.0
    assert len(sae.cfg.model_id) == 16
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))
    # the file reads raw activations: its explained variance is the reported one
    windows = token_windows(tiny["tok"], [CORPUS[-len(CORPUS) // 10 :]], 32, max_windows=8)
    x = collect(tiny["net"], windows, sae.cfg.hook_name, tiny["tok"].bos_id)
    assert explained_variance(x, sae(x)) > 0.5


def test_ce_loss_recovered_formula_and_the_real_splice(tiny):
    assert ce_loss_recovered(clean=2.0, sae=2.5, zero=4.0) == pytest.approx(0.75)
    assert ce_loss_recovered(clean=3.0, sae=3.0, zero=5.0) == 1.0
    tok, model = tiny["tok"], tiny["net"]
    windows = token_windows(tok, [TEXT], 24, max_windows=3)
    hook = "blocks.0.hook_resid_post"
    same = spliced_losses(model, windows, hook, lambda x: x, tok.bos_id)
    # the clean loss is the model's own: targets that are BOS are not scored
    ids = torch.as_tensor(windows)
    with torch.no_grad():
        full = model(ids)
    targets = ids[:, 1:].masked_fill(ids[:, 1:] == tok.bos_id, -100)
    want = F.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]), targets.reshape(-1), ignore_index=-100
    ).item()
    assert same.clean == pytest.approx(want, rel=1e-5)
    assert same.sae == pytest.approx(same.clean, rel=1e-6) and same.recovered == pytest.approx(1.0)
    zeroed = spliced_losses(model, windows, hook, torch.zeros_like, tok.bos_id)
    assert zeroed.sae == pytest.approx(zeroed.zero, rel=1e-6)
    assert zeroed.recovered == pytest.approx(0.0, abs=1e-6)
    assert abs(same.zero - same.clean) > 1e-4  # the ablation reaches the logits


def test_resume_continues_bit_exactly(tmp_path, capsys, tiny):
    """Stopped after step 4 (the later checkpoint and the SAE removed) and resumed: the same SAE,
    bit for bit, as the run that went straight through (weights, Adam, dead counters and the
    activation buffer's position all come back)."""
    from safetensors.torch import load_file

    from twofiles.train.checkpoint import list_checkpoints

    args = ("--layer", "0", "--tokens", "1024", "--checkpoint-interval", "4", "--kind", "relu")
    rc, straight, err = sae_train(capsys, tiny, tmp_path / "run", *args, "--dead-tokens", "256")
    assert rc == 0, err
    want = load_file(straight["sae"])
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [c.name for c in ckpts] == ["step_0000004.safetensors", "step_0000008.safetensors"]
    ckpts[-1].unlink()
    (tmp_path / "run" / "sae.safetensors").unlink()
    rc, resumed, err = sae_train(capsys, tiny, tmp_path / "run", *args, "--resume")
    assert rc == 0, err
    assert "resumed from step_0000004" in err
    got = load_file(resumed["sae"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0, msg=k)
    assert resumed["explained_variance"] == straight["explained_variance"]
    # a resume that would change the run is refused
    rc, _, err = sae_train(capsys, tiny, tmp_path / "run", *args, "--resume", "--k", "8")
    assert rc == 2 and "--k 8" in err


def test_dead_features_are_counted_and_get_the_auxk_gradient():
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2))
    cfg = SAETrainConfig(dead_tokens=30, aux_k=4)
    trainer = SAETrainer(sae, cfg)
    with torch.no_grad():
        # features 0..3: a tiny constant pre-activation that never makes the top 2 (the way
        # TopK's dead features lose: outcompeted, not negative)
        sae.W_enc[:, :4] = 0.0
        sae.b_enc[:4] = 1e-3
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer(torch.randn(10, 8, generator=g))
    counts = trainer.since_fired
    assert counts[:4].tolist() == [30, 30, 30, 30]
    assert trainer.dead()[:4].all()
    assert bool((counts[4:] < 30).all())  # every other feature fired in the last 30 tokens
    # the next batch's AuxK term reaches the dead features' encoder columns
    loss, stats = trainer(torch.randn(10, 8, generator=g))
    assert stats["dead"].item() == 4 and stats["aux"].item() > 0
    loss.backward()
    assert sae.W_enc.grad[:, :4].abs().sum() > 0
    # without the auxiliary loss they get nothing
    sae.zero_grad()
    trainer.aux_coefficient = 0.0
    trainer(torch.randn(10, 8, generator=g))[0].backward()
    assert sae.W_enc.grad[:, :4].abs().sum() == 0


def test_folded_scale_reads_raw_activations():
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, k=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x = torch.randn(6, 8)
    folded = fold_scale(sae, 0.25)
    torch.testing.assert_close(folded(x), sae(x * 0.25) / 0.25)
    assert torch.equal(folded.encode(x) > 0, sae.encode(x * 0.25) > 0)


def test_buffer_resumes_at_its_position_and_skips_bos(tiny):
    tok, model = tiny["tok"], tiny["net"]
    windows = token_windows(tok, [CORPUS], 16, max_windows=12)
    assert (windows[:, 0] == tok.bos_id).all()
    acts = collect(model, windows, "blocks.0.hook_resid_post", tok.bos_id)
    assert len(acts) == int((torch.as_tensor(windows) != tok.bos_id).sum())

    def fresh() -> ActivationBuffer:
        return ActivationBuffer(
            model, windows, "blocks.0.hook_resid_post", tok.bos_id, contexts=4, scale=2.0, seed=3
        )

    a = fresh()
    for _ in range(5):
        a.next(25)
    b = fresh()
    b.load_state_dict(a.state_dict())
    for _ in range(4):  # across fills and into the second pass over the windows
        assert torch.equal(a.next(40), b.next(40))

    # reuse: each chunk of windows is served twice, reshuffled; a resume lands mid-chunk
    def reused() -> ActivationBuffer:
        return ActivationBuffer(
            model,
            windows,
            "blocks.0.hook_resid_post",
            tok.bos_id,
            contexts=4,
            scale=2.0,
            seed=3,
            reuse=2,
        )

    c = reused()
    rows = []
    for i in range(3):
        c._fill(i)
        rows.append(c.rows.clone())
    assert not torch.equal(rows[0], rows[1])
    assert torch.equal(rows[0].sort(0).values, rows[1].sort(0).values)
    assert not torch.equal(rows[1].sort(0).values, rows[2].sort(0).values)
    d = reused()
    d.load_state_dict({"fill": 1, "offset": 7})
    assert torch.equal(d.next(5), rows[1][7:12])


def test_bad_input_exits_2(tmp_path, capsys, tiny):
    rc, _, err = sae_train(capsys, tiny, tmp_path / "a", "--layer", "7")
    assert rc == 2 and "--layer 7" in err and "0..1" in err
    assert not (tmp_path / "a" / "sae.safetensors").exists()
    with pytest.raises(SystemExit) as e:
        sae_train(capsys, tiny, tmp_path / "b", "--layer", "0", "--kind", "gated")
    assert e.value.code == 2 and "--kind" in capsys.readouterr().err
    rc, _, err = sae_train(capsys, tiny, tmp_path / "c", "--layer", "0", "--k", "0")
    assert rc == 2 and "--k 0" in err
