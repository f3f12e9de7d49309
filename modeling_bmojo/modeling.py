"""B'MOJO language model on the Hugging Face contract: blocks, `BMojoModel`, `BMojoForCausalLM`.

Block: x -> x + Mixer(RMSNorm(x)) -> h + SwiGLU(RMSNorm(h)), or x + Mixer(RMSNorm(x)) alone when
`intermediate_size` is 0 (Mamba's own blocks have no MLP). The mixer of layer i is
`config.mixer_types[i]`: B'MOJO, Mamba-2, sliding-window or full attention (DESIGN.md §2).

Two forms of one function (DESIGN.md §4): an empty cache runs the parallel form over the whole
input (padding moved behind each row's real tokens, so every row's chunks start at its own first
token); a filled cache runs the recurrent form one token at a time.
"""

import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple

from ..configuration.configuration_bmojo import BMojoConfig
from ..kernels.dispatch import swiglu
from .attention import Attention, BMojoMixer
from .cache import CACHE_NAME, BMojoCache, _fingerprint, check_cache, check_cache_storage, pick_cache
from .checkpoint import load_checked
from .common import RMSNorm, shared_across_layers
from .inputs import check_inputs, left_justify_order, output_hidden_states_flag
from .loss import linear_cross_entropy
from .mamba2 import Mamba2Mixer, ssm_init_values


@dataclass
class BMojoModelOutput(BaseModelOutputWithPast):
    """`innovation_loss`: the weighted innovation-predictor loss, averaged over B'MOJO layers. `attentions` is
    always None: no layer forms attention weights (`output_attentions=True` raises)."""

    innovation_loss: torch.FloatTensor | None = None


@dataclass
class BMojoCausalLMOutput(CausalLMOutputWithPast):
    """`loss` = LM loss + `innovation_loss` when labels are given. When the Trainer passes
    `num_items_in_batch`, both terms are sums over this batch's tokens divided by it (the innovation term by
    its token sum, so `innovation_loss` x tokens / `num_items_in_batch`); `innovation_loss` is unweighted.
    `attentions` is always None, as in `BMojoModelOutput`. `logits` is None in training mode with labels
    when `config.fused_linear_cross_entropy` is on (and `logits_to_keep` is 0): the LM loss is then computed
    in chunks of tokens without materialising them (`loss.linear_cross_entropy`)."""

    innovation_loss: torch.FloatTensor | None = None


class BMojoMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.use_kernels = config.use_kernels

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), use_kernels=self.use_kernels))


def _compile_once_per_layer_kind(fn):
    """Hierarchical compilation (torch >= 2.8, `torch.compiler.nested_compile_region`): torch.compile traces
    and optimises a layer once and reuses it for every layer of the same structure, instead of inlining all
    of them into one graph; the step stays one graph (one CUDA graph). Used for the decode step (4 tiny
    layers on CPU with Inductor: 155 s -> 78 s) and, opt-in (`PARALLEL_REGIONS`), for the parallel form.
    A no-op in eager mode; `BMOJO_NESTED_COMPILE=0` turns it off (to compare)."""
    region = getattr(torch.compiler, "nested_compile_region", None)
    if region is None or os.environ.get("BMOJO_NESTED_COMPILE", "1") == "0":
        return fn
    return region(fn)


@_compile_once_per_layer_kind
def _decode_layer_region(layer, hidden, pos, valid, state):
    return layer.step(hidden, pos, valid, state)


def _decode_layer(layer, hidden, pos, valid, state):
    """A layer's decode step, in a nested compile region unless the layer writes its state through a custom
    op (the fused eidetic update): a region whose inputs such an op mutates fails to functionalize (torch
    2.11: "Found a custom (non-ATen) operator whose output has alias annotations"); inlined into the step's
    graph, the op is functionalized and written back in place as any other."""
    if layer.mixer.writes_state_through_custom_op(hidden):
        return layer.step(hidden, pos, valid, state)
    return _decode_layer_region(layer, hidden, pos, valid, state)


@_compile_once_per_layer_kind
def _parallel_layer_region(layer, hidden, lengths, state):
    return layer(hidden, lengths, state)


# Opt-in: under Inductor (torch 2.13) a region called twice gets wrong gradients. The backward region writes
# its input gradient into the buffer of its incoming gradient, which the caller then reuses (upstream
# pytorch/pytorch#192840 / #193960; tests/test_compile.py::test_inductor_reused_parallel_region_gradients).
# `torch._inductor.config.allow_buffer_reuse = False` avoids it, at a memory cost, for those who opt in.
PARALLEL_REGIONS = os.environ.get("BMOJO_NESTED_COMPILE_PARALLEL", "0") == "1"


def _parallel_layer(layer, hidden, lengths, state):
    """A layer's parallel form, compiled once per layer kind when PARALLEL_REGIONS, except under gradient
    checkpointing: a checkpointed layer inside a nested compile region fails to trace (torch 2.13:
    InternalTorchDynamoError KeyError), so checkpointed layers are inlined into the graph as before."""
    if not PARALLEL_REGIONS or (layer.gradient_checkpointing and layer.training):
        return layer(hidden, lengths, state)
    return _parallel_layer_region(layer, hidden, lengths, state)


def build_mixer(config, kind):
    if kind == "bmojo":
        return BMojoMixer(config)
    if kind == "mamba2":
        return Mamba2Mixer(config)
    return Attention(config, config.window_size if kind == "sliding_attention" else None)


class BMojoDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.kind = config.mixer_types[layer_idx]
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.use_kernels)
        self.mixer = build_mixer(config, self.kind)
        self.post_mixer_norm = self.mlp = None  # intermediate_size 0: a block without MLP
        if config.intermediate_size > 0:
            self.post_mixer_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.use_kernels)
            self.mlp = BMojoMLP(config)

    def _add_mlp(self, hidden):
        return hidden if self.mlp is None else hidden + self.mlp(self.post_mixer_norm(hidden))

    def forward(self, hidden, lengths, state=None):
        """Parallel form over [B, T, d]; fills `state` (the mixer's typed state) when given."""
        out, aux = self.mixer(self.input_norm(hidden), lengths, state)
        return self._add_mlp(hidden + out), aux

    def step(self, hidden, pos, valid, state):
        """One token per row [B, d] at positions pos [B]; rows where not `valid` leave `state` unchanged."""
        return self._add_mlp(hidden + self.mixer.step(self.input_norm(hidden), pos, valid, state))


class BMojoPreTrainedModel(PreTrainedModel):
    config_class = BMojoConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BMojoDecoderLayer"]
    _is_stateful = True  # assisted decoding would need to roll the SSM state back: refused by generate()
    # The attention layers (sliding window, eidetic memory) run their own code and never form attention
    # weights: no SDPA / flash / flex backend to pick (attn_implementation= raises) and no output_attentions.
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`. Once the classes are registered for an Auto class
        (`register_for_auto_class`), the folder (and so `push_to_hub`) gets the flat remote code of
        `bmojo.hub.export` and an `auto_map` instead of copies of this package's modules, whose relative
        imports would not resolve in a Hub repo."""
        save = super().save_pretrained
        try:
            from ..hub.export import save_pretrained_with_remote_code
        except ImportError:  # in the flat Hub file, which leaves bmojo.hub out: transformers copies that file
            return save(save_directory, *args, **kwargs)
        return save_pretrained_with_remote_code(self, save, save_directory, *args, **kwargs)

    def __init__(self, config, *inputs, **kwargs):
        if isinstance(config, BMojoConfig):
            config._validate()  # also catches fields assigned after the config was built
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # A checkpoint saved with another config raises a ValueError naming the parameters that do not
        # match, instead of loading partly random (checkpoint.py).
        return load_checked(super().from_pretrained, args, kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, Mamba2Mixer):
            dt_bias, a_log, d = ssm_init_values(self.config, module.heads)
            init.copy_(module.dt_bias, dt_bias)
            init.copy_(module.A_log, a_log)
            init.copy_(module.D, d)
            # configs saved before the field existed: "normal", which the Linear branch above already did
            scheme = getattr(self.config, "ssm_proj_init", "normal")
            if scheme == "fan_in":
                # mamba_ssm's scheme (an idea, not its code): PyTorch's default Linear bound 1/sqrt(fan_in),
                # and the residual branch's output scaled down by sqrt(depth) as in GPT-2.
                depth_scale = self.config.num_hidden_layers ** -0.5
                for proj, scale in ((module.in_proj, 1.0), (module.out_proj, depth_scale)):
                    bound = scale / math.sqrt(proj.in_features)
                    init.uniform_(proj.weight, -bound, bound)
            elif scheme == "out_fan_in":
                # what HF Mamba2's initialisation leaves (measured on transformers 5.24): in_proj as every
                # Linear, out_proj at PyTorch's default bound, half the std of N(0, 0.1) at width 64
                bound = 1.0 / math.sqrt(module.out_proj.in_features)
                init.uniform_(module.out_proj.weight, -bound, bound)


class BMojoModel(BMojoPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([BMojoDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.use_kernels)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple  # return_dict=False, or config.return_dict False: a tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, past_key_values=None,
                output_attentions=None, **kwargs):
        output_hidden_states = output_hidden_states_flag(self.config, output_hidden_states, output_attentions)
        past_key_values = pick_cache(cache, past_key_values)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if past_key_values is not None:
            # Python-level checks: once per eager call, never inside a compiled decode step.
            if not torch.compiler.is_compiling():
                check_cache(past_key_values, self.config)
                check_cache_storage(past_key_values, self, inputs_embeds)  # its dtype and devices are this model's
        elif use_cache:
            past_key_values = BMojoCache(self.config)
        mask = check_inputs(self.config, input_ids, inputs_embeds, attention_mask, position_ids, past_key_values)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if past_key_values is None or past_key_values.is_empty:
            hidden, all_hidden, aux = self._parallel(inputs_embeds, mask, past_key_values,
                                                     output_hidden_states, padded=attention_mask is not None)
        else:
            hidden, all_hidden, aux = self._recurrent(inputs_embeds, mask, past_key_values, output_hidden_states)
        all_hidden = tuple(all_hidden) if all_hidden is not None else None  # transformers' type for them
        return BMojoModelOutput(last_hidden_state=hidden, hidden_states=all_hidden, innovation_loss=aux,
                                **{CACHE_NAME: past_key_values if use_cache else None})

    def _parallel(self, hidden, mask, cache, output_hidden_states, padded=True):
        if torch.compiler.is_compiling():  # the graph dedupes what the layers share: no block to trace
            return self._parallel_layers(hidden, mask, cache, output_hidden_states, padded)
        with shared_across_layers():  # positions, angles, masks: computed by the first layer, reused
            return self._parallel_layers(hidden, mask, cache, output_hidden_states, padded)

    def _parallel_layers(self, hidden, mask, cache, output_hidden_states, padded):
        lengths = mask.sum(dim=1)
        # None when every row already starts with its real tokens; without a mask (`padded` False) none can
        # be padded: no look at the mask (a host sync eagerly, a sort in a compiled graph)
        order = left_justify_order(mask) if padded else None

        # back to the caller's column order: a gather by the inverse permutation (functional, so the same
        # under torch.compile; an in-place scatter into a fresh buffer is not)
        inverse = None if order is None else torch.argsort(order, dim=1)

        def restore(h):
            return h if inverse is None else torch.gather(h, 1, inverse[..., None].expand_as(h))

        def justify(h):
            return h if order is None else torch.gather(h, 1, order[..., None].expand_as(h))

        all_hidden = [hidden] if output_hidden_states else None
        hidden = justify(hidden)
        if cache is not None:
            cache.allocate(self, hidden.shape[0], hidden.shape[1], hidden.device, hidden.dtype)
            cache.start(lengths, hidden.shape[1])
        aux_terms = []
        for i, layer in enumerate(self.layers):
            hidden, aux = _parallel_layer(layer, hidden, lengths, None if cache is None else cache.states[i])
            if layer.kind == "bmojo":
                aux_terms.append(aux)
            if output_hidden_states:
                # The returned hidden states are in the caller's column order and on the autograd path: the
                # next layer reads them moved back (two gathers per layer, only when they are asked for with
                # a left-padded row), so a gradient reaches each of them (`retain_grad`), as in any HF model.
                all_hidden.append(restore(hidden))
                hidden = justify(all_hidden[-1])
        hidden = restore(self.norm(hidden))
        if output_hidden_states:
            all_hidden[-1] = hidden
        return hidden, all_hidden, self._innovation_loss(aux_terms, hidden)

    def _recurrent(self, hidden, mask, cache, output_hidden_states):
        new = hidden.shape[1]
        if not torch.compiler.is_compiling():  # compiled steps run on a cache sized by generate()
            cache.reserve(new)
        outputs, per_layer = [], [[] for _ in range(len(self.layers) + 1)]
        for t in range(new):
            valid = mask[:, t]
            h = hidden[:, t]
            per_layer[0].append(h)
            for i, layer in enumerate(self.layers):
                h = _decode_layer(layer, h, cache.lengths, valid, cache.states[i])
                per_layer[i + 1].append(h)
            cache.advance(valid, 1)
            outputs.append(self.norm(h))
        hidden = torch.stack(outputs, dim=1)
        all_hidden = None
        if output_hidden_states:
            all_hidden = [torch.stack(hs, dim=1) for hs in per_layer]
            all_hidden[-1] = hidden
        return hidden, all_hidden, hidden.new_zeros((), dtype=torch.float32)

    def _innovation_loss(self, terms, like):
        if not terms:
            return like.new_zeros((), dtype=torch.float32)
        return self.config.innovation_loss_weight * torch.stack(terms).mean()


class BMojoForCausalLM(BMojoPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = BMojoModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # generate() would build a DynamicCache; a B'MOJO model needs its own cache, with room for
        # max_length tokens in full-attention layers so that its size is fixed and the decode step compiles.
        if model_kwargs.get(CACHE_NAME) is None and generation_config.use_cache is not False:
            model_kwargs[CACHE_NAME] = self._generation_cache(generation_config)
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _generation_cache(self, generation_config):
        """A new cache, or, where generate() compiles the decode step (CUDA), the previous call's cache,
        cleared in place: CUDA graphs are recorded on its buffers' addresses, so reusing them (as
        transformers does for its static caches) spares a re-recording per generate() call. A cache
        returned by an earlier generate() is then overwritten by the next one on the same model."""
        max_length = generation_config.max_length
        if self.device.type != "cuda" or getattr(generation_config, "disable_compile", False):
            return BMojoCache(self.config, max_cache_len=max_length)
        cache = getattr(self, "_reused_cache", None)
        if cache is None or cache.fingerprint != _fingerprint(self.config):
            cache = self._reused_cache = BMojoCache(self.config, max_cache_len=max_length)
        # Room for the longest generation so far: the states are re-allocated only where this one needs more
        # (full-attention layers), so calls of varying length keep the same buffers (BMojoCache.allocate).
        cache.grow_room(max_length)
        cache.reset()
        return cache

    @staticmethod
    def create_masks_for_generate(attention_mask=None, **kwargs):
        """transformers builds 4D masks for compileable caches; our layers read the 2D padding mask only."""
        return attention_mask

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """transformers' own inputs, with the attention mask cut to the new tokens once the cache is filled:
        the model reads no more of it, and a compiled decode step then sees one shape at every token."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        cache = inputs.get(CACHE_NAME, inputs.get("past_key_values"))
        mask = inputs.get("attention_mask")
        ids = inputs.get("input_ids")
        new = ids.shape[1] if ids is not None else inputs["inputs_embeds"].shape[1]
        if isinstance(cache, BMojoCache) and not cache.is_empty and torch.is_tensor(mask) and mask.dim() == 2:
            # clone, not .contiguous(): a (B, 1) slice with B = 1 counts as contiguous yet keeps the stride of
            # the whole mask, which grows every token; dynamo guards on strides and would recompile per token.
            inputs["attention_mask"] = mask[:, -new:].clone(memory_format=torch.contiguous_format)
        return inputs

    def _fused_lm_loss(self, hidden, labels, num_items_in_batch=None, ignore_index=-100, shift_labels=None,
                       **kwargs):
        """HF's `ForCausalLMLoss` (labels shifted left by one, padded with `ignore_index`; the sum over
        `num_items_in_batch` when given, else the mean over labelled tokens), by `linear_cross_entropy`."""
        if shift_labels is None:
            shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        shift_labels = shift_labels.reshape(-1).to(hidden.device)  # (B * T,)
        total = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, shift_labels,
                                     ignore_index=ignore_index)
        if num_items_in_batch is None:
            return total / (shift_labels != ignore_index).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None,
                logits_to_keep=0, past_key_values=None, output_attentions=None, **kwargs):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=pick_cache(cache, past_key_values), inputs_embeds=inputs_embeds,
                             use_cache=use_cache, output_hidden_states=output_hidden_states,
                             output_attentions=output_attentions, return_dict=True)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else slice(None)
        fused = (self.training and labels is not None and self.config.fused_linear_cross_entropy
                 and isinstance(logits_to_keep, int) and logits_to_keep == 0
                 and isinstance(self.lm_head, nn.Linear) and self.lm_head.bias is None)
        logits = None if fused else self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None:
            innovation, items = outputs.innovation_loss, kwargs.get("num_items_in_batch")
            if items is not None:
                # The LM loss is then this micro-batch's label-token sum over the global label count. Make
                # the innovation term a sum over the tokens its mean ran over, divided by that same global
                # count: accumulation steps and processes then add up to exactly the whole batch's value.
                # (Weighting the mean by the micro-batch's share of label tokens was exact only when every
                # micro-batch had the same ratio of label tokens to tokens.)
                batch, new = hidden.shape[:2]
                tokens = attention_mask[:, -new:].sum() if attention_mask is not None else batch * new
                innovation = innovation * torch.as_tensor(tokens, device=innovation.device) / torch.as_tensor(
                    items, device=innovation.device)
            if fused:
                lm_loss = self._fused_lm_loss(hidden, labels, **kwargs)
            else:
                lm_loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
            loss = lm_loss + innovation
        return BMojoCausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                   innovation_loss=outputs.innovation_loss,
                                   **{CACHE_NAME: getattr(outputs, CACHE_NAME)})
