"""The commented recipe template written by `condense init`."""

TEMPLATE = """\
# condense recipe: an ordered list of stages. Check it with `condense recipe validate FILE`,
# run it with `condense run FILE --out runs/NAME`, continue a killed run with `condense resume runs/NAME`.
version: 1
name: my-chain
seed: 0

# Data: any source from `condense datasets` with its options, e.g.
#   {name: cifar10, root: /data/cifar-10-batches-py}   or   {name: csv, path: data.csv, label_column: y}
data: {name: digits}

# How every stage is measured (latency: median of `repeats` runs after warm-up, per batch size).
measure: {batch_sizes: [1, 256], repeats: 20}

stages:
  # Train a model from the zoo (`condense models`), or your own as package.module:factory.
  - name: teacher
    kind: train
    model: {name: cnn, kwargs: {}}
    train: {epochs: 15, lr: 0.003, optimizer: adamw, schedule: cosine, warmup_steps: 20}

  # Distill into a smaller student. alpha weighs the teacher's soft targets against the labels
  # (alpha: 1 = label-free); or list losses explicitly: [{name: soft_kd, weight: 0.9, temperature: 4}, ...]
  - name: student
    kind: distill
    model: {name: cnn, kwargs: {width: 8}}
    teacher: teacher
    config: {alpha: 0.9, temperature: 4}
    train: {epochs: 30, lr: 0.003}

  # Remove channels physically (the model really shrinks), then recover by distilling from the
  # unpruned model. method: channel | magnitude | nm | slimming | random
  - name: pruned
    kind: prune
    config: {method: channel, ratio: 0.25, round_to: 8, importance: l1}
    recover: {method: distill, alpha: 0.9, temperature: 4}
    train: {epochs: 10, lr: 0.002}

  # Static int8: calibrate on training samples; the deployed file is a QDQ int8 ONNX run by onnxruntime.
  - name: int8
    kind: quantize
    config: {method: static, observer: minmax, calibration_samples: 512}

  # Write the deliverable ONNX (int8 when the input is quantized), checked against PyTorch.
  - name: deploy
    kind: export
"""
