"""What the runs share: the data module, the dense model and the pruning sample sets."""

from __future__ import annotations

from harness import GLUE_DIR, minilm_dir

from kp_lightning.datamodules.embedding import EmbeddingDataModule
from kp_lightning.modules import TaskModule
from kp_lightning.modules.model_loading import accepted_inputs
from kp_lightning.pruning.sample_set import SampleSet
from kp_lightning.pruning.sampling import collate_sample_batches, draw_sample_indices

from .evaluation import evaluate_module
from .settings import KWON_AVG_LENGTH, KWON_SAMPLES, NUM_TOKENS, SEED


def datamodule() -> EmbeddingDataModule:
    dm = EmbeddingDataModule(
        tokenizer=minilm_dir(),
        glue_dir=str(GLUE_DIR),
        sts_file=str(GLUE_DIR / "STS-B" / "dev.tsv"),
        retrieval=f"qnli:{GLUE_DIR / 'QNLI' / 'dev.tsv'}",
        max_length=128,
        batch_size=32,
        eval_batch_size=128,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


class Context:
    """What the runs share: data module, dense TaskModule, sample sets (built once, lazily)."""

    def __init__(self):
        self.dm = datamodule()
        self.module = TaskModule(minilm_dir(), task_spec=self.dm.task_spec)
        self.dense = self.module.model.eval()
        self._samples = {}

    def samples(self, method: str) -> tuple[SampleSet, dict]:
        if method not in self._samples:
            train = self.dm.datasets["train"]
            if method == "kprune":
                indices = draw_sample_indices(train, NUM_TOKENS, SEED, "ours")
            else:
                indices = draw_sample_indices(
                    train, KWON_SAMPLES * KWON_AVG_LENGTH, SEED, "reference", KWON_AVG_LENGTH, KWON_SAMPLES
                )
            batches = collate_sample_batches(train, self.dm.train_collator(), indices, 32)
            samples = SampleSet(batches, "cpu", accepted_inputs(self.dense))
            info = {
                "num_samples": samples.num_samples,
                "num_distinct_samples": len(set(indices)),
                "num_tokens": samples.num_tokens,
                "mean_length": samples.mean_length,
            }
            if method == "kprune":
                info["sample"] = f"{samples.num_tokens} tokens, {samples.num_samples} sentences"
            else:
                info["sample"] = (
                    f"{samples.num_samples} sentences ({info['num_distinct_samples']} distinct, drawn with "
                    f"replacement), {samples.num_tokens} tokens"
                )
            self._samples[method] = (samples, info)
        return self._samples[method]

    def evaluate(self, model) -> dict:
        self.module.model = model
        try:
            return evaluate_module(self.module, self.dm)
        finally:
            self.module.model = self.dense
