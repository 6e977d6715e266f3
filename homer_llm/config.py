"""Configuration objects: HOMER's hyperparameters and decoding settings.

Both are frozen dataclasses validated at construction, so a bad value fails where it is written,
not deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Pruning = Literal["calibrated", "uncalibrated", "random"]
PRUNING_MODES: tuple[str, ...] = ("calibrated", "uncalibrated", "random")
PruneUnit = Literal["token", "word"]
PRUNE_UNITS: tuple[str, ...] = ("token", "word")
RopeScaling = Literal["yarn", "linear"]
ROPE_SCALINGS: tuple[str, ...] = ("yarn", "linear")
MergeAttention = Literal["auto", "causal", "own-leaf"]
MERGE_ATTENTIONS: tuple[str, ...] = ("auto", "causal", "own-leaf")
FocusLocator = Literal["tree", "leaf", "lexical"]
FOCUS_LOCATORS: tuple[str, ...] = ("tree", "leaf", "lexical")


@dataclass(frozen=True)
class HomerConfig:
    """HOMER hyperparameters (HOMER.md section 2). ``None`` means "derive from the model".

    ``HomerConfig()`` is the library's default; ``HomerConfig.paper()`` is the method as published
    (causal merges, the question's states averaged by the merges). ``docs/method.md`` lists every
    place where the two differ and the measurements behind each default.

    The fields come in groups; a field marked "only with ..." has no effect otherwise.

    Tree shape:
        chunk_len: M, the longest sequence any forward pass sees. Default: half the model window.
        cache_len: T, the length of the final cache, at most ``chunk_len`` (the root is one merged
            chunk). Default: ``chunk_len``.
        warmup_layers: W, layers run per leaf before any merging. Default: 12/32 of the layers
            (12 for a 32-layer model, as in the paper), reduced if the tree is too tall for it.

    Pruning (which tokens survive each merge):
        pruning: "calibrated" (bias-corrected significance, the method), "uncalibrated" (B = 0)
            or "random" (the paper's ablation).
        calibration_samples: only with "calibrated": number of generic-text chunks used to build
            the bias table.
        seed: only with "random": seed of the random choice.
        prune_unit: not with "random": "token" (the paper: every token ranked on its own) or
            "word": a token's significance is the best of its word span (``homer_llm.spans``), so
            numbers and multi-piece words are kept or dropped whole.

    Merged nodes:
        merge_attention: who attends to whom in the layers of merged nodes. "causal" (HOMER as
            published): every token attends to all tokens before it, so a right child's tokens
            also read the left child's, which carry the same position ids. "own-leaf"
            (``engine.TreePass.node_mask``): a context token attends only to the prefix and to
            its own leaf's surviving tokens, as it did inside its leaf; the suffix (the question)
            still reads everything, so pruning and the answer see the whole document. It needs
            an attention backend that takes an arbitrary mask (sdpa, eager). "auto" (default):
            "own-leaf" on such a backend without focus or with the hybrid read, else "causal"
            (under flash-attn, and with focus alone: the tree locator ranks leaves on causal
            merges, the leaf locator runs no merges). ``HomerModel.homer`` holds the resolved value.

    The question:
        reread_suffix: only when the tree has more than one leaf. True (default): drop the root's
            suffix (question + assistant tag), whose states are the mean of every leaf's copy, and
            run it again after the pruned cache at the same position ids, so the question reads
            the merged document with all its layers (``engine.reread_suffix``; one pass of S
            tokens). Pruning is still chosen by the question inside the tree. False: HOMER as
            published.

    RoPE scaling under HOMER (the paper's HOMER + YaRN):
        rope_scaling: None (default), "yarn" or "linear": run HOMER on a view of the model whose
            rotary embedding is scaled by ``rope_factor`` through transformers' own rope settings.
            The scaled window is ``window * rope_factor``, so the default chunk is that much longer
            and a long document needs fewer leaves (a shallower tree). The view shares every
            weight; it gets its own calibration table. Dynamic NTK is not offered: transformers'
            dynamic rule leaves sequences inside the pretrained window unchanged, and every HOMER
            chunk is.
        rope_factor: only with ``rope_scaling``: the scaling factor (> 1).

    Focus (``homer_llm.focus``; not part of the published method):
        focus_leaves: 0 (default): answer from HOMER's compressed cache. k > 0: when the tree has
            more than one leaf, rank the leaves by how much of the question's attention they draw
            (``focus_locator``), and answer from a plain read of the prefix, the whole text of the
            k best leaves (document order; as many as fit ``window - (window - chunk_len) // 2``
            tokens with the affixes) and the question. Better at copying a detail out of a very
            long document, blind to whatever lies in the leaves it leaves out (not for summaries
            of the whole).
        focus_margin: only with focus: tokens of the neighbouring text also read on each side of
            every chosen leaf, as far as the budget above allows (default 256). A leaf boundary is
            an arbitrary cut: the sentence the question is about can start in one leaf and end in
            the next, and the leaf that draws the attention may hold only its second half.
        focus_locator: only with focus: how the leaves are ranked. "leaf" (default,
            ``focus.leaf_relevance``): inside each leaf's own pass, before any merge, by the share
            of the question's attention that falls on the leaf's text, averaged over the upper half
            of the leaf's layers; the merges are not run, so locating costs the leaves only.
            "tree": by the attention the question, read afresh after the whole pruned tree, gives
            each leaf's surviving tokens (it favours the first leaves of each subtree).
            "lexical" (``homer_llm.lexical``): by BM25 of the question's tokens in each leaf's
            text, no model pass; a later leaf only where it scores at least half the best. It
            tells apart leaves with look-alike facts that the attention locators rank closely,
            and is blind to a question worded unlike the text.
        focus_keep_document: only with focus. False (default): the answer reads the chosen leaves
            alone, as above. True, the hybrid read (``homer_llm.hybrid``): the answer reads HOMER's
            compressed cache of the whole document, then the chosen leaves' text in full after it,
            then the question, all inside the window; so a detail is read at full resolution and
            the rest of the document is still there for a question about the whole. The tree's
            chunk shrinks (``hybrid.hybrid_chunk_len``: 3712 tokens on an 8k window) so one leaf
            and its margins fit after the cache; it costs the tree, the locator's leaf passes and
            one plain pass of the leaf.
    """

    # Tree shape.
    chunk_len: int | None = None  # M; None: half the model window
    cache_len: int | None = None  # T <= M; None: chunk_len
    warmup_layers: int | None = None  # W; None: 12/32 of the layers
    # Pruning.
    pruning: Pruning = "calibrated"
    calibration_samples: int = 8  # only with pruning="calibrated"
    seed: int = 0  # only with pruning="random"
    prune_unit: PruneUnit = "token"  # not with pruning="random"
    # The question after the tree.
    reread_suffix: bool = True  # False: the paper's averaged question states
    # RoPE scaling under HOMER.
    rope_scaling: RopeScaling | None = None
    rope_factor: float = 2.0  # only with rope_scaling
    # Focus (off with focus_leaves=0).
    focus_leaves: int = 0
    focus_margin: int = 256  # only with focus_leaves > 0
    focus_locator: FocusLocator = "leaf"  # only with focus_leaves > 0
    focus_keep_document: bool = False  # only with focus_leaves > 0; True: the hybrid read
    # Merged nodes.
    merge_attention: MergeAttention = "auto"  # "causal": the paper's merges

    @classmethod
    def paper(cls, **overrides) -> HomerConfig:
        """HOMER as published (Song et al., ICLR 2024): the preset beside the library's default.

        Differs from ``HomerConfig()`` in two fields: ``merge_attention="causal"`` (a right
        child's tokens also attend to the left sibling in merged nodes) and
        ``reread_suffix=False`` (the answer reads the question's states as the merges averaged
        them). The other defaults already are the paper's: calibrated token-level pruning, 12/32
        of the layers as warm-up, no RoPE scaling, no focus. The shared 4-token start that
        ``prompt.split_text`` and ``prompt.anchor_prefix`` give a document without a BOS is a step
        of prompt building, not a field here; build ``PromptParts`` by hand to leave it out.

        Args:
            overrides: any other field, e.g. ``chunk_len=2048``; it may also override the two
                fields above.

        Returns:
            The frozen config.
        """
        fields = {"merge_attention": "causal", "reread_suffix": False}
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self) -> None:
        for name in ("chunk_len", "cache_len", "warmup_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"HomerConfig.{name} must be an int or None, got {value!r}")
        if self.chunk_len is not None and self.chunk_len < 8:
            raise ValueError(f"HomerConfig.chunk_len must be >= 8, got {self.chunk_len}")
        if self.cache_len is not None and self.cache_len < 2:
            raise ValueError(f"HomerConfig.cache_len must be >= 2, got {self.cache_len}")
        if self.chunk_len is not None and self.cache_len is not None and self.cache_len > self.chunk_len:
            raise ValueError(f"HomerConfig.cache_len {self.cache_len} exceeds chunk_len {self.chunk_len}: "
                             "the final cache holds at most one chunk")
        if self.warmup_layers is not None and self.warmup_layers < 0:
            raise ValueError(f"HomerConfig.warmup_layers must be >= 0, got {self.warmup_layers}")
        if self.pruning not in PRUNING_MODES:
            raise ValueError(f"HomerConfig.pruning must be one of {PRUNING_MODES}, got {self.pruning!r}")
        if self.prune_unit not in PRUNE_UNITS:
            raise ValueError(f"HomerConfig.prune_unit must be one of {PRUNE_UNITS}, got {self.prune_unit!r}")
        if not isinstance(self.reread_suffix, bool):
            raise TypeError(f"HomerConfig.reread_suffix must be a bool, got {self.reread_suffix!r}")
        if self.calibration_samples < 1:
            raise ValueError(f"HomerConfig.calibration_samples must be >= 1, got {self.calibration_samples}")
        if self.rope_scaling is not None and self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"HomerConfig.rope_scaling must be one of {ROPE_SCALINGS} or None, got "
                             f"{self.rope_scaling!r}" + (" (dynamic NTK leaves every HOMER chunk unchanged: each is "
                                                         "inside the pretrained window)"
                                                         if self.rope_scaling in ("ntk", "dynamic") else ""))
        if isinstance(self.rope_factor, bool) or not isinstance(self.rope_factor, int | float):
            raise TypeError(f"HomerConfig.rope_factor must be a number, got {self.rope_factor!r}")
        if isinstance(self.focus_leaves, bool) or not isinstance(self.focus_leaves, int):
            raise TypeError(f"HomerConfig.focus_leaves must be an int, got {self.focus_leaves!r}")
        if self.focus_leaves < 0:
            raise ValueError(f"HomerConfig.focus_leaves must be >= 0, got {self.focus_leaves}")
        if isinstance(self.focus_margin, bool) or not isinstance(self.focus_margin, int):
            raise TypeError(f"HomerConfig.focus_margin must be an int, got {self.focus_margin!r}")
        if self.focus_margin < 0:
            raise ValueError(f"HomerConfig.focus_margin must be >= 0, got {self.focus_margin}")
        if self.focus_locator not in FOCUS_LOCATORS:
            raise ValueError(f"HomerConfig.focus_locator must be one of {FOCUS_LOCATORS}, got {self.focus_locator!r}")
        if not isinstance(self.focus_keep_document, bool):
            raise TypeError(f"HomerConfig.focus_keep_document must be a bool, got {self.focus_keep_document!r}")
        if self.merge_attention not in MERGE_ATTENTIONS:
            raise ValueError(f"HomerConfig.merge_attention must be one of {MERGE_ATTENTIONS}, "
                             f"got {self.merge_attention!r}")
        if self.rope_scaling is not None and not self.rope_factor > 1.0:
            raise ValueError(f"HomerConfig.rope_factor must be > 1 with rope_scaling, got {self.rope_factor}")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. ``temperature == 0`` means greedy.

    Attributes:
        max_new_tokens: upper bound on generated tokens.
        temperature: softmax temperature; 0 selects greedy decoding.
        top_p: nucleus sampling mass (1.0 disables it).
        top_k: keep only the k most likely tokens (0 disables it).
        seed: seed of the sampling generator (None: nondeterministic).
        stop: strings that end generation; the matched stop string is not returned.
        suppress_tokens: token ids never generated (their logits are set to -inf at every step).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    suppress_tokens: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens))
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.suppress_tokens):
            raise ValueError(f"suppress_tokens must be token ids (ints >= 0), got {self.suppress_tokens!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
