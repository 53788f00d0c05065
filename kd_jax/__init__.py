"""kd_jax: knowledge distillation for image classifiers in JAX/Flax."""

# Quiet C++ start-up logging. TensorFlow (tfds input pipelines), XLA and gRPC read these
# variables once, when their shared libraries load, so they must be set before any of them
# is imported: here, the first module of every kd_jax entry point (the trainer CLI, the
# converter, benchmarks). Without them each TensorFlow import prints "WARNING: All log
# messages before absl::InitializeLog() is called are written to STDERR" and a oneDNN notice
# (twice: two libraries). TF_CPP_MIN_LOG_LEVEL=2 keeps errors; TF_ENABLE_ONEDNN_OPTS=0 turns
# off TensorFlow's oneDNN custom ops, whose notice ignores the log level (TensorFlow only
# decodes and augments input here; JAX does the maths). setdefault: a value set by the user
# wins.
import os as _os

for _name, _value in (("TF_CPP_MIN_LOG_LEVEL", "2"), ("TF_ENABLE_ONEDNN_OPTS", "0"),
                      ("GRPC_VERBOSITY", "ERROR"), ("GLOG_minloglevel", "2")):
    _os.environ.setdefault(_name, _value)
del _os, _name, _value

__version__ = "0.1.0"
