"""tasks: held-out prompt suites from real text and the target model's true next-token distributions.

Public API: ``load_suite(name_or_path) -> Suite``; ``Suite.prompts(split)``, ``Suite.truth(prompt_id)``,
``Suite.vocab_size``; ``build_suite``, ``PRESETS``; ``prompt_rows`` (a suite's prompts without truth) and ``leaks``
(the check that no prompt shows another's hidden continuation); ``load_target``, ``load_tokenizer``.
Imports are light: torch and transformers load only when a model or tokenizer is needed.
"""

from .corpora import CorpusError, Document, read_corpus, split_documents
from .cuts import leaks, prompt_rows
from .suite import PRESETS, SPLITS, Prompt, Suite, SuiteConfig, SuiteError, build_suite, load_suite
from .target import Target, TargetError, TargetIdentity, load_target, load_tokenizer
from .vocab import Vocabulary

__all__ = [
    "PRESETS", "SPLITS", "CorpusError", "Document", "Prompt", "Suite", "SuiteConfig", "SuiteError", "Target",
    "TargetError", "TargetIdentity", "Vocabulary", "build_suite", "load_suite", "load_target", "load_tokenizer",
    "leaks", "prompt_rows", "read_corpus", "split_documents",
]
