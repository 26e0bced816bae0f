"""How often a run closes Bytewax epochs: at each snapshot with recovery, otherwise rarely (every epoch's
end made a waiting cluster's workers spin until the last one got there)."""

from __future__ import annotations

from datetime import timedelta

from dataflow.cli import QUIET_EPOCH_S, _epochs
from dataflow.config import Config, FilesConfig, RecoveryConfig


def test_a_job_with_recovery_closes_an_epoch_at_each_snapshot():
    config = Config(recovery=RecoveryConfig(dir="/var/lib/flowattr", snapshot_s=7.5))
    assert _epochs(config) == {"epoch_interval": timedelta(seconds=7.5)}


def test_a_job_without_recovery_closes_epochs_rarely():
    assert _epochs(Config()) == {"epoch_interval": timedelta(seconds=QUIET_EPOCH_S)}
    assert QUIET_EPOCH_S > RecoveryConfig().snapshot_s


def test_a_file_run_takes_no_snapshot_whatever_the_recovery_setting():
    config = Config(files=FilesConfig(input_dir="in"), recovery=RecoveryConfig(dir="/var/lib/flowattr", snapshot_s=7.5))
    assert _epochs(config) == {"epoch_interval": timedelta(seconds=QUIET_EPOCH_S)}
