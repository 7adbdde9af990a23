"""Loading an ONNX model into a plan that pyconv runs: the nodes in topological order, each
bound once to the function that computes it (the builders of ``_registry``), constants folded, batch
normalisation folded into the convolution before it, a Relu before a MaxPool moved after it,
an Add and/or Relu after a convolution, GEMM or pool run in place in that node's step, values
held in numbered slots rather than looked up by name, and every intermediate array dropped
after its last use."""
from __future__ import annotations

import os
import time

import numpy as np

from . import _ops_conv, _ops_dense, _ops_sequence  # noqa: F401  (they fill BUILDERS)
from ._ops_dense import batch_norm_affine
from ._registry import _ABSENT, _RUNTIME, BUILDERS, VIEW_OPS, Node, UnsupportedError

__all__ = ["Graph", "load", "SUPPORTED_OPS"]

SUPPORTED_OPS = tuple(sorted(BUILDERS))
_DEFAULT_DOMAINS = ("", "ai.onnx")
_MIN_OPSET = 9


def _straight_line(steps, output_slots):
    """`steps` (as Graph._steps) as one generated function env -> env that makes the same calls
    in the same order as Graph._run_steps, each value in a local variable and each step a line
    of its own: a batch-1 LeNet-5 spent 4 of its 40 us per run in the generic loop's indexing
    and unpacking. Values come from env where they are first read (inputs, constants, shape
    results), an intermediate is released after its last use, and the graph's outputs are
    written back to env. The source is kept as the function's `source`."""
    namespace, lines, have = {}, [], set()
    for n, (fn, inputs, single, outputs, drop, name, op_type) in enumerate(steps):
        namespace[f"step{n}"] = fn
        for k in inputs:
            if k not in have:
                lines.append(f"v{k} = env[{k}]")
                have.add(k)
        # (the comment shows the op type only, built from known names: a node's own name is
        # text from the file, never pasted into code)
        kind = "".join(c for c in op_type if c.isalnum() or c == "+")
        call = f"step{n}({', '.join(f'v{k}' for k in inputs)})  # {kind}"
        if single is not None:
            lines.append(f"v{single} = {call}")
        else:
            lines.append(f"out = {call}")
            lines += [f"v{k} = out[{j}]" for j, k in enumerate(outputs) if k is not None]
        have.update(k for k in outputs if k is not None)
        lines += [f"v{k} = None" for k in drop]
    lines += [f"env[{k}] = v{k}" for k in dict.fromkeys(output_slots) if k in have]
    source = "def run(env):\n" + "".join(f"    {line}\n" for line in lines) + "    return env\n"
    exec(compile(source, "<pyconv.onnx graph>", "exec"), namespace)
    run = namespace["run"]
    run.source = source
    return run


class _RawNode:
    """A node of the graph as read from the model (and rewritten by the planner)."""

    def __init__(self, name, op_type, domain, inputs, outputs, attrs):
        self.name, self.op_type, self.domain = name, op_type, domain
        self.inputs, self.outputs, self.attrs = list(inputs), list(outputs), attrs
        self.epilogue = ()     # ("Add", "Relu"), ("Add",) or ("Relu",): what it absorbed
        self.fused_names = []  # the names of the nodes it absorbed


def _read_model(path_or_model):
    import onnx

    if isinstance(path_or_model, (str, os.PathLike)):
        return onnx.load(os.fspath(path_or_model))
    if isinstance(path_or_model, bytes):
        return onnx.load_from_string(path_or_model)
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    raise TypeError(f"pyconv.onnx.load: expected a path, bytes or an onnx.ModelProto, got "
                    f"{type(path_or_model).__name__}")


def _attributes(node_proto):
    from onnx import AttributeProto
    from onnx.helper import get_attribute_value

    attrs = {}
    for a in node_proto.attribute:
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise UnsupportedError(f"pyconv.onnx: node {node_proto.name!r} ({node_proto.op_type}) has "
                                   f"a subgraph attribute {a.name!r}; control flow is not supported")
        v = get_attribute_value(a)
        attrs[a.name] = v.decode() if isinstance(v, bytes) else v
    return attrs


def _topological(nodes, available):
    """The nodes ordered so that each comes after the producers of its inputs (depth first,
    iterative, so deep graphs do not hit the recursion limit)."""
    producers = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
    order, state = [], [0] * len(nodes)  # 0 unseen, 1 being expanded, 2 placed
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(nodes[i])
                continue
            if state[i] == 2:
                continue
            if state[i] == 1:  # reached again from one of its own descendants
                raise ValueError(f"pyconv.onnx: the graph has a cycle through node {nodes[i].name!r}")
            state[i] = 1
            stack.append((i, True))
            for name in nodes[i].inputs:
                if not name or name in available:
                    continue
                if name not in producers:
                    raise ValueError(f"pyconv.onnx: node {nodes[i].name!r} reads {name!r}, which "
                                     "no node, input or initializer of the graph defines")
                if state[producers[name]] != 2:
                    stack.append((producers[name], False))
    return order


def _fold_batch_norms(nodes, consts, graph_outputs):
    """Conv/ConvTranspose -> BatchNormalization (inference, constant parameters, the conv's output
    used only there) becomes one conv with scaled weights and a shifted bias. Exact up to float
    rounding: bn(conv(x)) = conv(x) * s + t with per-channel s, t."""
    consumers = {}
    for n in nodes:
        for name in n.inputs:
            consumers[name] = consumers.get(name, 0) + 1
    producer = {o: n for n in nodes for o in n.outputs}
    kept = []
    for n in nodes:
        conv = producer.get(n.inputs[0]) if n.op_type == "BatchNormalization" else None
        if (conv is None or conv.op_type not in ("Conv", "ConvTranspose") or n.attrs.get("training_mode", 0)
                or len([o for o in n.outputs if o]) != 1 or consumers.get(n.inputs[0]) != 1
                or n.inputs[0] in graph_outputs or conv.inputs[1] not in consts
                or (len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in consts)
                or not all(p in consts for p in n.inputs[1:5])):
            kept.append(n)
            continue
        w = consts[conv.inputs[1]]
        s, t = batch_norm_affine(*(consts[p] for p in n.inputs[1:5]), n.attrs.get("epsilon", 1e-5))
        if conv.op_type == "Conv":
            w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        else:  # (C, K/group, ...): output channel g*K/group + j is column j of group g's rows
            g = conv.attrs.get("group", 1)
            C, Kg = w.shape[:2]
            w = (w.reshape((g, C // g, Kg) + w.shape[2:])
                 * s.reshape((g, 1, Kg) + (1,) * (w.ndim - 2))).reshape(w.shape)
        b = consts[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
        dtype = consts[conv.inputs[1]].dtype
        w_name, b_name = f"{conv.inputs[1]}__bn_{n.name}", f"{n.outputs[0]}__bn_bias"
        consts[w_name] = np.ascontiguousarray(w.astype(dtype))
        consts[b_name] = (b * s + t).astype(dtype)
        conv.inputs = [conv.inputs[0], w_name, b_name]
        conv.outputs = [n.outputs[0]]
    return kept


def _pool_before_relu(nodes, graph_outputs):
    """Relu -> MaxPool (no indices, the Relu's output read only there) becomes MaxPool -> Relu:
    max is monotone, so relu(max(x)) = max(relu(x)) exactly, and the Relu then runs on the
    pooled, smaller array."""
    consumers = {}
    for n in nodes:
        for name in n.inputs:
            consumers.setdefault(name, []).append(n)
    order = list(nodes)
    for relu in nodes:
        if relu.op_type != "Relu" or relu.outputs[0] in graph_outputs:
            continue
        readers = consumers.get(relu.outputs[0], [])
        if len(readers) != 1 or readers[0].op_type != "MaxPool" or len([o for o in readers[0].outputs if o]) != 1:
            continue
        pool = readers[0]
        pooled = pool.outputs[0]
        pool.inputs[0], pool.outputs[0] = relu.inputs[0], f"{pooled}__before_relu"
        relu.inputs[0], relu.outputs[0] = pool.outputs[0], pooled
        order.remove(relu)
        order.insert(order.index(pool) + 1, relu)
    return order


# Ops that, given values computed from the inputs' shapes alone (a graph input's Shape) and
# constants, compute such a value too: the graph's shape arithmetic, done once per signature
# (_execute).
_SHAPE_ARITHMETIC = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Add", "Sub", "Mul", "Div",
                     "Reshape", "Range", "ConstantOfShape", "Expand", "Where", "Identity",
                     "ReduceSum", "ReduceMax", "ReduceMin", "Equal", "Floor", "Ceil", "Neg", "Abs", "Max", "Min"}

# Ops whose output is an array of their own, fresh on every run, that a following Add or Relu
# may therefore finish in place within the same step.
_EPILOGUE_PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool"}


def _fuse_epilogues(nodes, graph_outputs):
    """A producer (see _EPILOGUE_PRODUCERS) whose single output is read only by an Add, a Relu,
    or an Add and then a Relu, absorbs them: the step computes the producer and then adds the
    Add's other operand and clamps at zero, in place on its fresh output, under the name of the
    last node absorbed. One step instead of two or three (ONNX Runtime fuses the same chains
    into its Conv). The fused step takes the place of the last node absorbed, where the Add's
    other operand is known to exist; the producer's own inputs still exist there, as the drop
    lists are computed from the final order."""
    readers = {}
    for n in nodes:
        for name in n.inputs:
            if name:
                readers.setdefault(name, []).append(n)
    producer = {o: n for n in nodes for o in n.outputs if o}

    def sole_reader(n):
        outs = [o for o in n.outputs if o]
        if len(outs) != 1 or len(n.outputs) != 1 or outs[0] in graph_outputs:
            return None
        r = readers.get(outs[0], [])
        return r[0] if len(r) == 1 and r[0].inputs.count(outs[0]) == 1 else None

    position = {id(n): k for k, n in enumerate(nodes)}
    replaced = {}  # id of an absorbed node -> the fused producer that takes its place
    absorbed_producers = set()
    for n in nodes:
        if n.op_type not in _EPILOGUE_PRODUCERS or id(n) in replaced:
            continue
        absorbed, residual = [], None
        reader = sole_reader(n)
        if (reader is not None and reader.op_type == "Add" and len(reader.inputs) == 2
                and all(reader.inputs) and id(reader) not in replaced):
            other = reader.inputs[1] if reader.inputs[0] == n.outputs[0] else reader.inputs[0]
            other_producer = producer.get(other)
            # of two fusable operands, the later one absorbs the Add: the earlier is then done
            if not (other_producer is not None and other_producer.op_type in _EPILOGUE_PRODUCERS
                    and sole_reader(other_producer) is reader
                    and position[id(other_producer)] > position[id(n)]):
                absorbed, residual = [reader], other
                reader = sole_reader(reader)
        if reader is not None and reader.op_type == "Relu" and id(reader) not in replaced:
            absorbed.append(reader)
        if not absorbed:
            continue
        n.epilogue = tuple(a.op_type for a in absorbed)
        n.fused_names = [a.name for a in absorbed]
        while n.inputs and not n.inputs[-1]:  # trailing optional inputs left out
            n.inputs.pop()
        if residual is not None:
            n.inputs.append(residual)
        n.outputs = list(absorbed[-1].outputs)
        for a in absorbed:
            replaced[id(a)] = n
        absorbed_producers.add(id(n))
    order = []
    for n in nodes:
        if id(n) in absorbed_producers:
            continue
        fused = replaced.get(id(n))
        if fused is None:
            order.append(n)
        elif n.outputs == fused.outputs:  # the last node absorbed: the fused step goes here
            order.append(fused)
    return order


def _with_epilogue(fn, epilogue):
    """fn followed by what _fuse_epilogues gave its node: the Add of a last argument (in place
    where it broadcasts to fn's output) and a Relu, both on fn's fresh output."""
    if not epilogue:
        return fn
    passes = _epilogue_passes(fn, epilogue)
    if hasattr(fn, "with_epilogue"):  # a builder whose kernel applies it (Conv)
        return fn.with_epilogue(epilogue, passes)
    return passes


def _epilogue_passes(fn, epilogue):
    """fn, then the epilogue in passes over fn's output (see _with_epilogue)."""
    if epilogue == ("Relu",):
        if hasattr(fn, "with_relu"):  # a builder whose kernel does both (MaxPool, ConvTranspose)
            return fn.with_relu

        def relu(*args):
            return _ops_dense.relu_in_place(fn(*args))
        return relu
    with_relu = "Relu" in epilogue

    def add(*args):
        y, r = fn(*args[:-1]), args[-1]
        if with_relu and _ops_dense.add_relu_in_place(y, r) is not None:
            return y
        if r.shape == y.shape or np.broadcast_shapes(y.shape, r.shape) == y.shape:
            np.add(y, r, out=y)
        else:
            y = y + r
        return _ops_dense.relu_in_place(y) if with_relu else y
    return add


class Graph:
    """An ONNX graph bound to pyconv's kernels. ``run(output_names, feeds)`` mirrors
    ``onnxruntime.InferenceSession.run``; ``graph(**feeds)`` returns the single output (or a
    tuple of all outputs)."""

    def __init__(self, model):
        graph = model.graph
        opsets = {o.domain: o.version for o in model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx"))
        if self.opset is None:
            raise UnsupportedError("pyconv.onnx: the model imports no default-domain (ai.onnx) opset")
        if self.opset < _MIN_OPSET:
            raise UnsupportedError(f"pyconv.onnx: opset {self.opset} is older than the oldest "
                                   f"supported, {_MIN_OPSET}")
        from onnx.helper import tensor_dtype_to_np_dtype
        from onnx.numpy_helper import to_array

        consts = {t.name: to_array(t) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in consts]
        self.output_names = [o.name for o in graph.output]
        self._input_specs = {}
        for i in graph.input:
            if i.name in consts:
                continue
            t = i.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] \
                if t.HasField("shape") else None
            self._input_specs[i.name] = (tensor_dtype_to_np_dtype(t.elem_type), dims)

        nodes = [_RawNode(n.name or f"{n.op_type}_{k}", n.op_type, n.domain, n.input, n.output,
                          _attributes(n)) for k, n in enumerate(graph.node)]
        nodes = _topological(nodes, set(consts) | set(self.input_names))
        for n in nodes:  # the first node pyconv cannot run, in execution order
            if n.domain not in _DEFAULT_DOMAINS or n.op_type not in BUILDERS:
                opset = opsets.get(n.domain, "?")
                raise UnsupportedError(
                    f"pyconv.onnx: node {n.name!r} (op_type {n.op_type}, domain "
                    f"{n.domain or 'ai.onnx'!r}, opset {opset}) is not supported; pyconv runs "
                    f"{', '.join(SUPPORTED_OPS)} from the default domain")
        nodes = _fold_batch_norms(nodes, consts, set(self.output_names))
        nodes = _pool_before_relu(nodes, set(self.output_names))
        nodes = _fuse_epilogues(nodes, set(self.output_names))
        self._plan(nodes, consts)

    def _plan(self, nodes, consts):
        graph_outputs = set(self.output_names)
        consumers = {}
        for n in nodes:
            for name in n.inputs:
                if name:
                    consumers[name] = consumers.get(name, 0) + 1
        fresh = set()  # values computed here into memory of their own (not views, constants, inputs)
        of_shapes = set()  # values that depend on the inputs' shapes only, not on their data
        steps = []
        for n in nodes:
            own = n.inputs[:len(n.inputs) - ("Add" in n.epilogue)]  # the producer's own inputs
            known = [(_ABSENT if not name else consts.get(name, _RUNTIME)) for name in own]
            node = Node(n.name, n.op_type, self.opset, n.attrs, len(own),
                        len([o for o in n.outputs if o]) if not n.epilogue else 1, known)
            first = n.inputs[0] if n.inputs else None
            node.overwrite_first = (first in fresh and consumers.get(first) == 1
                                    and first not in graph_outputs)
            fn = _with_epilogue(BUILDERS[n.op_type](node), n.epilogue)
            if all(name in consts or not name for name in n.inputs):  # all known: compute it now
                outs = fn(*[consts[name] if name else None for name in n.inputs])
                outs = outs if isinstance(outs, tuple) else (outs,)
                for name, value in zip(n.outputs, outs):
                    if name:
                        consts[name] = np.asarray(value)
                continue
            # (Shape of a graph input only: an intermediate value's shape may depend on the data,
            # as NonMaxSuppression's does.)
            shapes_only = not any(o in graph_outputs for o in n.outputs) and (
                (n.op_type in ("Shape", "Size") and n.inputs[0] in self.input_names) or (
                    n.op_type in _SHAPE_ARITHMETIC and not n.epilogue
                    and all(not name or name in consts or name in of_shapes for name in n.inputs)))
            if shapes_only:  # (never overwritten in place: a run may reuse it, see _execute)
                of_shapes.update(o for o in n.outputs if o)
            elif n.op_type not in VIEW_OPS:
                fresh.update(o for o in n.outputs if o)
            inputs = list(n.inputs)
            while inputs and not inputs[-1]:  # trailing optional inputs left out
                inputs.pop()
            name = "+".join([n.name] + n.fused_names)
            steps.append((fn, inputs, n.outputs, name, "+".join((n.op_type,) + n.epilogue), shapes_only))
        self._consts = consts
        missing = [o for o in self.output_names if o not in consts
                   and not any(o in s[2] for s in steps) and o not in self.input_names]
        if missing:
            raise ValueError(f"pyconv.onnx: graph outputs {missing} are computed by no node")

        # Every value the steps read or write gets a slot of a list: a run fills a copy of the
        # list of constants, and each step reads its arguments by position (no name lookups)
        # and clears the slots of the values it reads for the last time (freeing them early).
        slot = {"": 0}  # slot 0 holds None: an optional input left out
        for name in list(self.input_names) + [v for _, ins, outs, *_ in steps for v in ins + outs]:
            slot.setdefault(name, len(slot))
        for name in self.output_names:
            slot.setdefault(name, len(slot))
        self._slot = slot
        self._template = [None] * len(slot)
        for name, k in slot.items():
            if name in consts:
                self._template[k] = consts[name]
        last_use = {}
        for k, (_, inputs, *_) in enumerate(steps):
            for name in inputs:
                last_use[name] = k
        # a step: (fn, input slots, the output slot where there is one output else None, the
        # output slots (None for an output left out), slots to clear after it, name, op type)
        self._steps = []
        for k, (fn, inputs, outputs, name, op_type, _) in enumerate(steps):
            drop = tuple(slot[v] for v in dict.fromkeys(inputs)
                         if v and last_use.get(v) == k and v not in graph_outputs and v not in consts)
            outs = [slot[o] if o else None for o in outputs]
            single = outs[0] if len(outs) == 1 else None
            self._steps.append((fn, tuple(slot[i] for i in inputs), single, tuple(outs), drop,
                                name, op_type))
        # The shape computations (Shape, then Gather, Concat... on its result: an exporter's
        # dynamic Reshape) are done once per signature of the inputs' shapes: a batch-1 DCGAN
        # generator spent 10-14 us of 60 per run on five such nodes.
        shape_steps = [k for k, step in enumerate(steps) if step[5]]
        self._shape_slots = tuple(slot[o] for k in shape_steps for o in steps[k][2] if o)
        self._data_steps = [s for k, s in enumerate(self._steps) if not steps[k][5]]
        self._shapes_known = {}  # the inputs' shapes -> the values of _shape_slots
        self._run_data = _straight_line(self._data_steps, [slot[o] for o in self.output_names])

    def _check_feeds(self, feeds):
        unknown = [k for k in feeds if k not in self._input_specs]
        if unknown:
            raise ValueError(f"pyconv.onnx: {unknown} are not inputs of the graph; its inputs are "
                             f"{self.input_names}")
        env = list(self._template)
        for name in self.input_names:
            if name not in feeds:
                raise ValueError(f"pyconv.onnx: input {name!r} is missing from the feeds")
            value = feeds[name]
            dtype, dims = self._input_specs[name]
            if not isinstance(value, np.ndarray) or value.dtype != dtype:
                raise TypeError(f"pyconv.onnx: input {name!r} must be a NumPy array of dtype {dtype}, "
                                f"got {getattr(value, 'dtype', type(value).__name__)}")
            if dims is not None and (len(dims) != value.ndim or any(
                    d is not None and d > 0 and d != n for d, n in zip(dims, value.shape))):
                raise ValueError(f"pyconv.onnx: input {name!r} must have shape "
                                 f"{['?' if d is None else d for d in dims]}, got {value.shape}")
            env[self._slot[name]] = value
        return env

    def _execute(self, env, timings=None):
        steps = self._steps
        if self._shape_slots:
            signature = tuple(env[self._slot[name]].shape for name in self.input_names)
            known = self._shapes_known.get(signature)
            if known is None:
                env = self._run_steps(env, steps, timings, self._shape_slots)
                if len(self._shapes_known) >= 64:  # a bound on what changing shapes keep
                    self._shapes_known.clear()
                self._shapes_known[signature] = env.pop()
                return env
            for k, value in zip(self._shape_slots, known):
                env[k] = value
            steps = self._data_steps
        # (per-node timings need the loop; the generated function runs the same calls)
        return self._run_data(env) if timings is None else self._run_steps(env, steps, timings)

    @staticmethod
    def _run_steps(env, steps, timings, record=None):
        """Runs `steps` on env; with `record` (slots), appends their values as they are made
        (before a later step clears them) to env as one last item."""
        recorded = {} if record else None
        for fn, inputs, single, outputs, drop, name, op_type in steps:
            if timings is None:
                outs = fn(*[env[i] for i in inputs])
            else:
                t0 = time.perf_counter()
                outs = fn(*[env[i] for i in inputs])
                timings.append((name, op_type, time.perf_counter() - t0))
            if single is not None:
                env[single] = outs
            else:
                for o, v in zip(outputs, outs):
                    if o is not None:
                        env[o] = v
            if recorded is not None:
                for o in outputs:
                    if o in record:
                        recorded[o] = env[o]
            for i in drop:
                env[i] = None
        if recorded is not None:
            env.append(tuple(recorded[k] for k in record))
        return env

    def run(self, output_names, feeds, *, timings=None):
        """Computes the graph on `feeds` (input name -> NumPy array) and returns the arrays named
        by `output_names` (None: every output), as ``onnxruntime.InferenceSession.run``. A list
        passed as `timings` receives (node name, op type, seconds) per node run."""
        names = self.output_names if output_names is None else output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"pyconv.onnx: {unknown[0]!r} is not an output of the graph; its "
                             f"outputs are {self.output_names}")
        env = self._execute(self._check_feeds(feeds), timings)
        # a constant output is copied: the caller may write to what it gets
        return [self._consts[n].copy() if n in self._consts else env[self._slot[n]] for n in names]

    def __call__(self, **feeds):
        out = self.run(None, feeds)
        return out[0] if len(out) == 1 else tuple(out)

    def __repr__(self):
        return (f"pyconv.onnx.Graph(inputs={self.input_names}, outputs={self.output_names}, "
                f"{len(self._steps)} steps, opset {self.opset})")


def load(path_or_model) -> Graph:
    """Loads an ONNX model (a file path, its bytes or an ``onnx.ModelProto``) and plans it for
    pyconv: -> a :class:`Graph`. Raises :class:`UnsupportedError` naming the first node (in
    execution order) or attribute value that pyconv cannot run."""
    return Graph(_read_model(path_or_model))
