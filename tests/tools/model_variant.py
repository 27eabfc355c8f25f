#!/usr/bin/env python3
"""Makes variants of an fp32 0..1 image model as other exporters ship them, for darkroom's
tests of models it must read correctly:

  --fp16          float16 input and output tensors and float16 weights (the arithmetic
                  stays float32 inside, a Cast after each fp16 tensor, as when such a model
                  runs on a CPU without fp16 kernels);
  --range signed  pixel values in -1..1 at the input and output;
  --range byte    pixel values in 0..255.

usage: model_variant.py IN.onnx OUT.onnx [--fp16] [--range signed|byte]
(needs the `onnx` package: scripts/setup-venv installs it)
"""
import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (scale, offset) with model value = scale * v + offset for v in 0..1
RANGES = {"unit": (1.0, 0.0), "signed": (2.0, -1.0), "byte": (255.0, 0.0)}


def main():
    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--range", choices=sorted(RANGES), default="unit")
    args = parser.parse_args()

    model = onnx.load(args.source)
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    (graph_input,) = [i for i in graph.input if i.name not in weights]
    (graph_output,) = graph.output
    before, after = [], []
    if args.fp16:
        for init in list(graph.initializer):
            if init.data_type != TensorProto.FLOAT:
                continue
            half = numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16"
            )
            graph.initializer.remove(init)
            graph.initializer.append(half)
            before.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))

    # The original graph now reads `unit_in` and writes `unit_out`, both float32 in 0..1.
    for node in graph.node:
        node.input[:] = ["unit_in" if n == graph_input.name else n for n in node.input]
        node.output[:] = ["unit_out" if n == graph_output.name else n for n in node.output]
    scale, offset = RANGES[args.range]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1.0 / scale, np.float32), "to_unit_scale"),
            numpy_helper.from_array(np.array(-offset / scale, np.float32), "to_unit_offset"),
            numpy_helper.from_array(np.array(scale, np.float32), "from_unit_scale"),
            numpy_helper.from_array(np.array(offset, np.float32), "from_unit_offset"),
        ]
    )
    wide_in = graph_input.name
    if args.fp16:
        before.append(helper.make_node("Cast", [graph_input.name], ["wide_in"], to=TensorProto.FLOAT))
        wide_in = "wide_in"
    before += [
        helper.make_node("Mul", [wide_in, "to_unit_scale"], ["scaled_in"]),
        helper.make_node("Add", ["scaled_in", "to_unit_offset"], ["unit_in"]),
    ]
    after += [
        helper.make_node("Mul", ["unit_out", "from_unit_scale"], ["scaled_out"]),
        helper.make_node(
            "Add", ["scaled_out", "from_unit_offset"], ["wide_out" if args.fp16 else graph_output.name]
        ),
    ]
    if args.fp16:
        after.append(helper.make_node("Cast", ["wide_out"], [graph_output.name], to=TensorProto.FLOAT16))
        graph_input.type.tensor_type.elem_type = TensorProto.FLOAT16
        graph_output.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = before + list(graph.node) + after
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, args.target)


if __name__ == "__main__":
    main()
