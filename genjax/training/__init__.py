"""Training: one jitted, device-agnostic loop for every genjax model, and the field trainer over it.

* state and steps (``_state.py``, ``_step.py``): :class:`TrainState`, :func:`make_train_step`,
  :func:`make_chunk_runner` (a ``lax.scan`` of steps per dispatch);
* the loop (``_loop.py``, settings and result in ``_config.py``): :func:`fit`, :class:`TrainConfig`,
  :class:`FitResult`;
* field networks (``_fit_field.py``): :func:`fit_field`, :func:`fit_score_model`, :func:`fit_flow_model`,
  :class:`FieldFit`;
* feeding data (``_feed.py``), data parallelism across devices and hosts (``_distributed.py``);
* what protects a run: checkpoints with checksums (``_checkpoint.py``), run fingerprints (``_fingerprint.py``), the
  folder lock (``_lock.py``), divergence detection (``_step.py``), atomic model saves (``_saving.py``);
* frozen parameters (``_frozen.py``): :func:`zero_frozen_updates`, an optax mask that leaves frozen entries
  bit-identical.
"""

from ._checkpoint import CheckpointManager as CheckpointManager
from ._checkpoint import CorruptCheckpointError as CorruptCheckpointError
from ._config import FitResult as FitResult
from ._config import TrainConfig as TrainConfig
from ._distributed import DATA_AXIS as DATA_AXIS
from ._distributed import initialize_distributed as initialize_distributed
from ._fingerprint import FingerprintMismatchError as FingerprintMismatchError
from ._fingerprint import json_digest as json_digest
from ._fingerprint import tree_digest as tree_digest
from ._fit_field import FieldFit as FieldFit
from ._fit_field import fit_field as fit_field
from ._fit_field import fit_flow_model as fit_flow_model
from ._fit_field import fit_score_model as fit_score_model
from ._frozen import zero_frozen_updates as zero_frozen_updates
from ._lock import CheckpointLockedError as CheckpointLockedError
from ._lock import DirectoryLock as DirectoryLock
from ._loop import TrainingDivergedError as TrainingDivergedError
from ._loop import fit as fit
from ._saving import atomic_directory as atomic_directory
from ._saving import load_pytree as load_pytree
from ._saving import save_pytree as save_pytree
from ._state import TrainState as TrainState
from ._state import init_train_state as init_train_state
from ._step import make_chunk_runner as make_chunk_runner
from ._step import make_train_step as make_train_step
