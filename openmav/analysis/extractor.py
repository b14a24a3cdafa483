"""``AttentionExtractor``: attention, hidden states, logits and MLP neurons of prompts, as numpy.

Works for causal LMs of every family the engine supports and for the encoders of
:mod:`openmav.analysis.models` (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DeBERTa-v2, MPNet,
DistilBERT, ALBERT, ModernBERT).  Attention probabilities come from eager attention.
Several prompts are run in batches, padded with an attention mask (causal LMs on the
right or left; encoders always on the right, since RoBERTa-style encoders number
positions from the input ids themselves); each prompt's results are cut back to its
own tokens, so they equal that prompt run alone (up to float rounding).

One residual convention, for every layer the last included, causal LMs and encoders
alike: ``hidden_states[0]`` is the embedding output as the model feeds it to block 0,
``hidden_states[l + 1]`` and ``residual[l]`` are the output of block ``l`` (read by a
forward hook on the block), before any norm the model applies after its blocks; the
input of that final norm is its own field, ``Activations.final_hidden_state`` (the last
block's output for a model without one), and so is its output (the input of the
unembedding), ``Activations.final_norm``.  transformers' ``output_hidden_states`` differs at the last
entry for most models (it has the final norm applied), so only its first entry is used.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import torch

from ..capture.hooks import attention_implementation, first_output
from ..capture.tokens import TokenTexts
from ..errors import InputError, UnsupportedModelError
from .checks import check_batch, check_extractor, check_flag, check_prompt, check_prompts
from .models import ModelHandle, open_model
from .results import Activations, AttentionStatsMapping, Comparison, LayerStatsMapping, NeuronActivations
from .stats import check_threshold


# the norm an encoder family applies after its last layer, relative to its base model (the others have none)
_ENCODER_FINAL_NORMS = {"modernbert": "final_norm"}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class AttentionExtractor:
    """Extract activations from a model: ``AttentionExtractor(model_name="smollm2-135m", device="cpu")``.

    Or pass objects: ``AttentionExtractor(model=hf_model, tokenizer=tok)`` or a LoadedModel
    as ``model``.  ``model_name=None`` loads the default model.  Whether a model object is
    run as an encoder or a causal LM is decided by
    :func:`~openmav.analysis.models.is_encoder_model`.
    """

    def __init__(self, model_name: str | None = None, device: str | None = None, model=None, tokenizer=None,
                 dtype: str = "float32", device_map=None, offload_folder: str | None = None,
                 quantization: str | None = None, reverify: bool = False):
        """A model by name (loaded on ``device``, default ``cpu``) or a model object, which stays on its
        device(s) unless ``device`` is given.  ``device_map`` (accelerate: ``"auto"``, ``"balanced"``,
        ``"sequential"`` or a dict of module -> device, ``"cpu"`` or ``"disk"``, with ``offload_folder``)
        splits a model bigger than one device; ``quantization`` ``"8bit"``/``"4bit"`` loads it through
        bitsandbytes (CUDA); ``reverify`` checks a causal LM's parts again even where a verdict is
        remembered (:mod:`openmav.backends.verified`).  Results come back as numpy arrays on the CPU, gathered from every device."""
        check_extractor(model_name, device, dtype, reverify)
        placed = device_map is not None or quantization is not None
        if model is None and device is None and not placed:
            device = "cpu"
        if model is not None and placed:
            raise InputError("device_map and quantization are for loading by name: a model object is already "
                             "placed (load it with device_map=... or quantization_config=... yourself)")
        self.handle: ModelHandle = open_model(model_name, device, model=model, tokenizer=tokenizer, dtype=dtype,
                                              device_map=device_map, offload_folder=offload_folder,
                                              quantization=quantization, reverify=reverify)
        self.model = self.handle.model
        self.tokenizer = self.handle.tokenizer
        self.model_name = self.handle.name
        self._texts = TokenTexts(self.tokenizer)
        if getattr(self.tokenizer, "pad_token_id", None) is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def is_encoder(self) -> bool:
        return self.handle.is_encoder

    @property
    def n_layers(self) -> int:
        return self.handle.n_layers

    # -- input checks ---------------------------------------------------------------------------
    def layer_index(self, layer_idx: int) -> int:
        """``layer_idx`` as a non-negative index (``-1`` is the last layer); InputError out of range."""
        n = self.n_layers
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, (int, np.integer)) or not -n <= layer_idx < n:
            whole = isinstance(layer_idx, (int, np.integer)) and not isinstance(layer_idx, bool)
            what = f"{int(layer_idx)} is out of range" if whole else \
                f"must be a whole number (a bool is not a layer), got {layer_idx!r:.40}"
            raise InputError(f"layer index {what}: {self.model_name} has {n} layers, "
                             f"valid indices are 0..{n - 1} (or -{n}..-1 from the end)")
        return int(layer_idx) % n

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise InputError("the prompt list is empty: give at least one prompt")
        out, ctx = [], self.handle.context_length
        for i, prompt in enumerate(prompts):
            if prompt is None or not str(prompt).strip():
                raise InputError(f"prompt {i} is empty: give some text")
            ids = self.tokenizer(str(prompt))["input_ids"]
            if ctx and len(ids) > ctx:
                raise InputError(f"prompt {i} is {len(ids)} tokens but {self.model_name} has a context of "
                                 f"{ctx} tokens: valid prompt lengths are 1..{ctx} tokens")
            out.append(list(ids))
        return out

    # -- forward --------------------------------------------------------------------------------
    def _run(self, prompts: list[str], batch_size: int = 16, padding_side: str = "right",
             hidden_states: bool = True, logits: bool = True, neuron_layers=(),
             residual_layers=()) -> list[Activations]:
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        encoded = self._encode(prompts)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        results: list[Activations] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            results.extend(self._run_batch(prompts[start:start + batch_size], chunk, padding_side,
                                           hidden_states, logits, tuple(neuron_layers), tuple(residual_layers)))
        return results

    def final_norm_module(self) -> torch.nn.Module | None:
        """The norm the model applies after its last block, whose output the unembedding reads, or ``None``.

        Causal LMs: the engine's ``parts.final_norm`` (``None`` for models without one, such as
        post-LayerNorm decoders).  Encoders: ModernBERT's ``final_norm``; the other encoder families
        (BERT-style post-LayerNorm blocks, DistilBERT, ALBERT, DeBERTa-v2, MPNet) have none."""
        if self.handle.lm is not None:
            return self.handle.lm.parts.final_norm
        path = _ENCODER_FINAL_NORMS.get(self.handle.family.name) if self.handle.family else None
        try:
            return self.handle.body.get_submodule(path) if path else None
        except AttributeError:
            return None

    def _skipped_layers(self) -> tuple[int, ...]:
        parts = getattr(self.handle.lm, "parts", None)
        return tuple(parts.skipped_layers) if parts is not None else ()

    def _forward(self, kwargs: dict, neuron_layers: tuple[int, ...], residual_layers: tuple[int, ...],
                 final_norm: bool = False):
        """One forward under eager attention; per layer asked for, the input of its MLP down projection
        (``neuron_layers``) and its block's output (``residual_layers``), each ``[b, pos, width]``; with
        ``final_norm`` the input and the output of :meth:`final_norm_module` too (``None`` when there is none).

        One hook per module: a module shared by several layers (ALBERT) runs once per layer, and
        layer ``l`` takes the call :meth:`ModelHandle.neuron_call` / :meth:`ModelHandle.block_call` names.
        A layer that text-only input skips (never called) passes the residual unchanged: its output is
        the output of the nearest earlier layer that ran.
        """
        handle = self.handle
        skipped = set(self._skipped_layers())
        hooked = set()
        for layer in residual_layers:  # a skipped layer reads the output of the layer before it
            while layer in skipped and layer > 0:
                layer -= 1
            if layer in skipped:
                raise UnsupportedModelError(f"layer {layer} of {self.model_name} is skipped by text-only input and "
                                            "no layer runs before it: its output is not defined")
            hooked.add(layer)
        sites = [("neurons", layer, handle.neuron_module(layer), handle.neuron_call(layer)) for layer in neuron_layers]
        sites += [("residual", layer, handle.blocks[layer], handle.block_call(layer)) for layer in sorted(hooked)]
        norm = self.final_norm_module() if final_norm else None
        if norm is not None:  # the last call: the one the unembedding reads
            sites += [("final_norm", -1, norm, -1), ("final_input", -1, norm, -1)]
        calls: dict[tuple[str, int], list[torch.Tensor]] = {}
        with ExitStack() as stack:
            for kind, _, module, _ in sites:
                if (kind, id(module)) in calls:
                    continue
                seen = calls[(kind, id(module))] = []
                if kind == "neurons":
                    def keep_input(mod, args, seen=seen):
                        seen.append(args[0].detach().float().cpu())
                    stack.callback(module.register_forward_pre_hook(keep_input).remove)
                elif kind == "final_input":
                    def keep_norm_input(mod, args, kwargs, seen=seen):
                        given = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
                        seen.append(given.detach().float().cpu())
                    stack.callback(module.register_forward_pre_hook(keep_norm_input, with_kwargs=True).remove)
                else:
                    def keep_output(mod, args, output, seen=seen):
                        seen.append(first_output(output).detach().float().cpu())
                    stack.callback(module.register_forward_hook(keep_output).remove)
            stack.enter_context(torch.inference_mode())
            stack.enter_context(attention_implementation(handle.body, "eager"))
            out = handle.body(**kwargs)
        captured: dict[str, dict[int, torch.Tensor]] = {"neurons": {}, "residual": {}, "final_norm": {},
                                                        "final_input": {}}
        for kind, layer, module, call in sites:
            seen = calls[(kind, id(module))]
            if kind in ("final_norm", "final_input") and not seen:
                continue  # a final norm this forward did not run: no final_norm
            if call >= len(seen) or not seen:
                raise UnsupportedModelError(f"{self.model_name}: the {kind} hook of layer {layer} "
                                            f"({type(module).__name__}) did not run in the forward")
            captured[kind][layer] = seen[call]
        residual = {}
        for layer in residual_layers:
            ran = layer
            while ran not in hooked:
                ran -= 1
            residual[layer] = captured["residual"][ran]
        return out, captured["neurons"], residual, captured["final_norm"].get(-1), captured["final_input"].get(-1)

    def _run_batch(self, prompts, chunk, padding_side, want_hidden, want_logits, neuron_layers, residual_layers):
        if self.is_encoder:
            padding_side = "right"  # see the module docstring
        width = max(len(ids) for ids in chunk)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(chunk):
            sl = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[b, sl] = torch.tensor(row)
            mask[b, sl] = 1
        kwargs = dict(input_ids=ids.to(self.handle.device), attention_mask=mask.to(self.handle.device),
                      output_attentions=True, output_hidden_states=want_hidden)
        if padding_side == "left":
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(self.handle.device)
        if not self.is_encoder:
            kwargs["use_cache"] = False
        # hidden states after the embeddings are the blocks' outputs, hooked (see the module docstring)
        layers = tuple(range(self.n_layers)) if want_hidden else ()
        out, neurons, blocks_out, normed, norm_in = self._forward(kwargs, neuron_layers,
                                                                  tuple(sorted(set(residual_layers) | set(layers))),
                                                                  final_norm=want_hidden)
        results = []
        for b, row in enumerate(chunk):
            n = len(row)
            sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
            attention = [_np(a[b:b + 1, :, sl, sl]) for a in out.attentions]
            hidden = ([_np(out.hidden_states[0][b:b + 1, sl])] + [blocks_out[layer][b:b + 1, sl].numpy()
                                                                 for layer in layers]) if want_hidden else []
            lg = None if self.is_encoder else getattr(out, "logits", None)
            before_norm = None
            if want_hidden:  # the final norm's input; without a final norm, the last block's output
                before_norm = norm_in[b:b + 1, sl].numpy() if norm_in is not None else hidden[-1]
            results.append(Activations(
                prompt=prompts[b], tokens=[t.display for t in self._texts.many(row)],
                token_ids=np.array(row), attention=attention, hidden_states=hidden,
                final_norm=normed[b:b + 1, sl].numpy() if normed is not None else None,
                final_hidden_state=before_norm,
                logits=_np(lg[b:b + 1, sl]) if (lg is not None and want_logits) else None,
                last_logits=_np(lg[b, sl][-1]) if lg is not None else None,
                mlp_mean=[neurons[layer][b, sl].mean(0).numpy() for layer in neuron_layers] or None,
                neurons={layer: neurons[layer][b, sl].numpy() for layer in neuron_layers} or None,
                residual={layer: blocks_out[layer][b, sl].numpy() for layer in residual_layers} or None,
                causal=not self.is_encoder, model=self.model_name,
            ))
        return results

    # -- public API -----------------------------------------------------------------------------
    def extract_activations(self, prompt: str) -> Activations:
        """Tokens, token ids, attention per layer ``[1, h, s, s]``, hidden states (the residual stream
        before any final norm, L+1 arrays ``[1, s, d]``), the final hidden state before the final norm
        ``final_hidden_state``, that norm's output ``final_norm`` (``None`` for a model without one) and
        (causal LMs) logits; see :class:`Activations`."""
        check_prompt(prompt)
        return self._run([prompt])[0]

    def get_attention_stats(self, prompt: str, threshold: float = 0.01) -> LayerStatsMapping:
        """Statistics of ``prompt``'s attention per layer, as a mapping ``{layer: {metric: float}}``.

        Integer layers in numeric order; per layer ``mean`` and ``std`` of the attention weights
        (pooled over heads and the keys each query sees; the mean is fixed by the prompt's length),
        then the means over heads of ``entropy``, ``max_weight``, ``sparsity`` (share of weights below
        ``threshold``), ``distance`` and ``sink`` (:mod:`openmav.analysis.stats`).  So Show Me Your
        Attention's loop runs as written::

            for layer, metrics in stats.items():
                print(f"{layer}: mean={metrics['mean']:.4f}, std={metrics['std']:.4f}")

        Per head: ``stats.heads`` (the mapping :meth:`get_head_stats` returns).
        See :class:`~openmav.analysis.results.LayerStatsMapping`.
        """
        check_threshold(threshold)  # before the forward
        check_prompt(prompt)
        return self._run([prompt], hidden_states=False, logits=False)[0].layer_stats(threshold)

    def get_head_stats(self, prompt: str, threshold: float = 0.01) -> AttentionStatsMapping:
        """Per layer and head statistics of ``prompt``, as a mapping ``{metric: [n_layers, n_heads]}``.

        The keys are the metrics ``entropy``, ``max_weight``, ``sparsity``, ``distance`` and ``sink``
        (defined in :mod:`openmav.analysis.stats`), in that order: ``stats["entropy"]`` is a numpy array,
        ``list(stats)`` the metric names, ``dict(stats)`` a plain dict of arrays.  Per layer means over
        heads: ``stats.per_layer()`` ``{layer: {metric: float}}``; one row per head: ``stats.to_rows()``.
        """
        check_threshold(threshold)
        check_prompt(prompt)
        return self._run([prompt], hidden_states=False, logits=False)[0].stats(threshold)

    def compare_prompts(self, prompts: list[str], batch_size: int = 16, padding_side: str = "right",
                        hidden_states: bool = False, neurons: bool = True) -> Comparison:
        """Run ``prompts`` in padded batches; each result equals that prompt run alone.

        ``padding_side`` applies to causal LMs; encoders are always padded on the right.

        Full logits are not kept (``last_logits`` is); with ``neurons`` each result carries the
        MLP neurons' mean over positions per layer (``mlp_mean``), for :mod:`openmav.analysis.compare`.
        With ``hidden_states`` each result has ``hidden_states`` and ``final_norm`` as
        :meth:`extract_activations` gives them.
        """
        check_prompts(prompts)
        check_batch(batch_size, padding_side, hidden_states=hidden_states, neurons=neurons)
        if neurons and not self.handle.has_neurons:
            neurons = False  # a mixture-of-experts or MLP-less model: compared without per-neuron means
        layers = range(self.n_layers) if neurons else ()
        results = self._run(prompts, batch_size, padding_side, hidden_states, False, layers)
        for r in results:
            r.neurons = None  # keep only the means: 100 prompts x L x seq x d_mlp would be large
        return Comparison(results)

    def get_neuron_activations(self, prompt: str, layer_idx: int, residual: bool = False) -> NeuronActivations:
        """The MLP hidden neurons of ``layer_idx`` ``[seq, d_mlp]`` (input of its down projection),
        and with ``residual`` the residual stream after that layer ``[seq, d]``: the output of its
        block, before any final norm of the model, the last layer included, so it equals
        ``extract_activations(prompt).hidden_states[layer + 1][0]``."""
        check_prompt(prompt)
        check_flag("residual", residual)
        layer = self.layer_index(layer_idx)
        result = self._run([prompt], hidden_states=False, logits=False, neuron_layers=(layer,),
                           residual_layers=(layer,) if residual else ())[0]
        return NeuronActivations(prompt, layer, result.tokens, result.neurons[layer],
                                 result.residual[layer] if residual else None, self.model_name)

    def get_model_info(self) -> dict:
        """Architecture facts: layers, heads, widths, vocabulary, context, parameters, device."""
        cfg = self.model.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
        lm = self.handle.lm
        return {
            "model_name": self.model_name, "model_type": getattr(cfg, "model_type", None),
            "kind": "encoder" if self.is_encoder else "causal-lm",
            "num_layers": self.n_layers, "num_heads": self.handle.n_heads,
            "num_kv_heads": getattr(lm.parts, "n_kv_heads", None) if lm else self.handle.n_heads,
            "hidden_size": hidden, "mlp_size": self.handle.mlp_size(),
            "vocab_size": getattr(cfg, "vocab_size", None), "context_length": self.handle.context_length,
            "total_parameters": int(sum(p.numel() for p in self.model.parameters())),
            "device": str(self.handle.device), "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "has_logits": not self.is_encoder,
        }
