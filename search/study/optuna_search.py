"""Ray Tune's OptunaSearch on the study's Optuna database (``search.study.optuna_study``), with a resume that
keeps Optuna's records exact. A module of its own, imported when a search starts: it imports Ray, and
Tune pickles the searcher by reference to this class, so a restored study runs the current code.

It relies on OptunaSearch's private fields (``_ot_study``, ``_ot_trials``, ``_storage``, ``_study_name``,
``_completed_trials``): tests/test_studies.py fails the day Ray renames them (search/cluster/private_api.py lists every
private interface the project uses)."""

from __future__ import annotations

import pickle
import warnings

from ray.tune.search.optuna import OptunaSearch

from maskclf.config import Config
from search.study import optuna_study
from search.study.optuna_study import PART_ATTR, close_lost, current_url, storage


def searcher(cfg: Config, part: str, sampler, space, metric: str, mode: str) -> "StudySearch":
    """The searcher of one part of the study ``cfg.run.study``, on the study's Optuna database."""
    url = optuna_study.storage_url(cfg)
    optuna_study.use_url(cfg.run.study, url)
    return StudySearch(url, part, stopped=cfg.search.stopped_trials, max_epoch=cfg.train.epochs, space=space,
                       metric=metric, mode=mode, sampler=sampler, study_name=cfg.run.study)


class StudySearch(OptunaSearch):
    """OptunaSearch whose study is never pickled: Tune saves the trials' Optuna ids, and a restored
    searcher reconnects to this run's storage. Trials that its killed driver asked for after Tune's
    last snapshot (Tune runs them again as new trials) end as FAIL with ``maskclf.lost``; a trial Optuna
    already holds as finished, or an epoch it already holds, is not told twice (a trial resumed from a
    checkpoint older than Optuna's record). Per result, one write and no read: Tune's loop waits on it.

    ``stopped="pruned"`` tells Optuna that a trial which ended before ``max_epoch`` (stopped by ASHA or by
    the study's epoch budget) was PRUNED, with its epochs as intermediate values, instead of COMPLETE with
    its last value: TPE then ranks it below every trial that trained longer, not against their final values."""

    def __init__(self, url: str, part: str, *, stopped: str = "complete", max_epoch: int = 0, **kwargs):
        self.url, self.part = url, part
        self.stopped, self.max_epoch = stopped, max_epoch
        self._told: dict[str, int] = {}  # Tune trial id -> last epoch (training iteration) Optuna holds
        self._finished_before: set[str] = set()  # restored trials that Optuna holds as finished
        super().__init__(storage=storage(url), **kwargs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ot_study"] = state["_storage"] = None
        state["_ot_trials"] = {tid: t._trial_id for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        import optuna

        self.__dict__.update(state)
        self.url = current_url(self._study_name, self.url)
        self._storage = storage(self.url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        self._ot_trials = {tid: optuna.Trial(self._ot_study, i) for tid, i in self._ot_trials.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
        self._told, self._finished_before = {}, set()
        for tid, t in self._ot_trials.items():  # what Optuna holds, which may be newer than Tune's snapshot
            record = self._storage.get_trial(t._trial_id)
            if record.state.is_finished():
                self._finished_before.add(tid)
            self._told[tid] = max(record.intermediate_values, default=0)
        close_lost(self._storage, self._ot_study, self.part, {t._trial_id for t in self._ot_trials.values()})

    def suggest(self, trial_id: str):
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(PART_ATTR, self.part)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        step = int(result.get("training_iteration") or 0)
        if trial_id in self._finished_before or step <= self._told.get(trial_id, 0):
            return
        super().on_trial_result(trial_id, result)
        self._told[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._finished_before:
            self._completed_trials.add(trial_id)
            return
        if trial_id in self._ot_trials and result and self.metric in result:
            self.on_trial_result(trial_id, result)  # Tune passes a trial's last epoch here only
        if self._cut_short(trial_id, result, error):
            from optuna.trial import TrialState

            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception as e:  # Optuna already holds it as finished: nothing to tell
                warnings.warn(f"Optuna refused trial {trial_id} as pruned: {e}")
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _cut_short(self, trial_id: str, result: dict | None, error: bool) -> bool:
        """A trial to tell Optuna as pruned: it reported, did not fail, and ended before ``max_epoch``."""
        if getattr(self, "stopped", "complete") != "pruned" or error or not result or self.metric not in result:
            return False
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return False
        return int(result.get("epoch") or result.get("training_iteration") or 0) < getattr(self, "max_epoch", 0)
