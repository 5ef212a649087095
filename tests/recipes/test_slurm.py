"""``launch/slurm.sbatch`` under stand-ins for srun, scontrol and python that record
what they were given: arguments reach train_voc.py quoted, every start resumes with ``auto``,
and exit 75 requeues the job while any other status is passed on."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    # srun runs its command as 2 tasks at once, as SLURM would; --wait=S: S seconds after the
    # first task ended the others are killed with what they started (0: never); it returns the
    # highest status, a killed task's as 128 + signal
    stub(
        bin_dir,
        "srun",
        f"""
wait_s=0
while [[ $1 == --* ]]; do
  [[ $1 == --wait=* ]] && wait_s=${{1#--wait=}}
  echo "srun $1" >> {log}
  shift
done
pids=()
for id in 0 1; do
  SLURM_PROCID=$id SLURM_LOCALID=$id SLURM_NTASKS=2 setsid "$@" &
  pids+=($!)
done
running() {{ for p in "${{pids[@]}}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done; }}
while [ "$(running | wc -l)" -eq 2 ]; do sleep 0.05; done
deadline=$((SECONDS + wait_s))
while [ -n "$(running)" ] && {{ [ "$wait_s" -eq 0 ] || [ $SECONDS -lt $deadline ]; }}; do
  sleep 0.05
done
for p in $(running); do kill -9 -- "-$p"; done  # the task and what it started
worst=0
for p in "${{pids[@]}}"; do wait "$p"; s=$?; [ $s -gt $worst ] && worst=$s; done
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
line=$(printf 'python rank=%s local=%s world=%s master=%s' "$RANK" "$LOCAL_RANK" \
  "$WORLD_SIZE" "$MASTER_ADDR"; for a in "$@"; do printf ' [%s]' "$a"; done)
echo "$line" >> {log}
sleep "$(echo $TRAIN_SLEEP | cut -d, -f$((RANK + 1)))"
exit "$(echo $TRAIN_STATUS | cut -d, -f$((RANK + 1)))"
""",
    )

    def submit(*args, status=0, sleep=(0, 0), kill_wait=None):
        """``status`` and ``sleep``: every task's, or one per task (rank 0, rank 1)."""
        status = status if isinstance(status, tuple) else (status, status)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "node-[a-b]",
            "TRAIN_STATUS": ",".join(map(str, status)),
            "TRAIN_SLEEP": ",".join(map(str, sleep)),
        }
        if kill_wait is not None:
            env["AGEN_KILL_WAIT"] = str(kill_wait)
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
    assert sorted(c for c in calls if c.startswith("python")) == [
        f"python rank={r} local={r} world=2 master=node-a [recipes/train_voc.py] "
        "[--resume_from_checkpoint] [auto] [--output_dir] [runs/my run] [--hub_model_id] [a b/c]"
        for r in (0, 1)
    ]
    assert [c for c in calls if c.startswith("srun")] == [
        "srun --kill-on-bad-exit=0",
        "srun --wait=120",
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


def test_a_failed_task_ends_the_stuck_one_and_the_job_is_not_requeued(cluster):
    """Task 1 fails at once; task 0 would wait for it (a collective, holding its GPUs): srun
    kills it AGEN_KILL_WAIT seconds after task 1 ended, and the failure is passed on."""
    proc, calls = cluster("--output_dir", "runs/x", status=(0, 1), sleep=(50, 0), kill_wait=1)
    assert proc.returncode == 137, proc.stdout  # 128 + SIGKILL: the highest status
    assert "training exited with status 137" in proc.stdout
    assert not any("requeue" in c for c in calls)


def test_tasks_that_exit_together_are_not_cut_short(cluster):
    """A requeue's 75 (or a finished run's 3): every task exits after the same last barrier,
    within the wait, so none is killed and the status is kept."""
    for status in (75, 3):
        proc, calls = cluster("--output_dir", "runs/x", status=status, sleep=(0.5, 0), kill_wait=2)
        assert proc.returncode == (0 if status == 75 else 3), proc.stdout
        assert ("scontrol requeue 4242" in calls) == (status == 75)
