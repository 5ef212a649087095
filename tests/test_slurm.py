"""Issue 21.1: ``launch/slurm.sbatch`` under stand-ins for srun, scontrol and python that record
what they were given: arguments reach train_voc.py quoted, every start resumes with ``auto``,
and exit 75 requeues the job while any other status is passed on."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "launch" / "slurm.sbatch"


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def cluster(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    # srun runs its command as 2 tasks, as SLURM would, and returns the highest status
    stub(
        bin_dir,
        "srun",
        """
shift  # --kill-on-bad-exit=0
worst=0
for id in 0 1; do
  SLURM_PROCID=$id SLURM_LOCALID=$id SLURM_NTASKS=2 "$@"; s=$?
  [ $s -gt $worst ] && worst=$s
done
exit $worst
""",
    )
    stub(
        bin_dir,
        "scontrol",
        f"""
if [ "$1" = show ]; then echo node-a; echo node-b; exit 0; fi
echo "scontrol $*" >> {log}
""",
    )
    stub(
        bin_dir,
        "python",
        f"""
printf 'python rank=%s local=%s world=%s master=%s' "$RANK" "$LOCAL_RANK" "$WORLD_SIZE" \
  "$MASTER_ADDR" >> {log}
for a in "$@"; do printf ' [%s]' "$a" >> {log}; done
echo >> {log}
exit ${{TRAIN_STATUS:-0}}
""",
    )

    def submit(*args, status=0):
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node-[a-b]",
            "TRAIN_STATUS": str(status),
        }
        proc = subprocess.run(
            ["bash", str(SBATCH), *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls

    return submit


def test_arguments_reach_every_task_quoted_and_resume_auto(cluster):
    proc, calls = cluster("--output_dir", "runs/my run", "--hub_model_id", "a b/c")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        f"python rank={r} local={r} world=2 master=node-a [recipes/train_voc.py] "
        "[--resume_from_checkpoint] [auto] [--output_dir] [runs/my run] [--hub_model_id] [a b/c]"
        for r in (0, 1)
    ]
    text = SBATCH.read_text()
    assert "#SBATCH --signal=USR1@180" in text and "#SBATCH --requeue" in text


def test_exit_75_requeues_the_job_and_other_statuses_pass_through(cluster):
    proc, calls = cluster("--output_dir", "runs/x", status=75)
    assert proc.returncode == 0 and "scontrol requeue 4242" in calls
    assert "requeueing job 4242" in proc.stdout
    proc, calls = cluster("--output_dir", "runs/x", status=1)
    assert proc.returncode == 1 and not any("requeue" in c for c in calls)
    proc, calls = cluster("--output_dir", "runs/x", status=3)
    assert proc.returncode == 3
