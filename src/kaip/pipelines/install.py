"""Plugging issue 8 into a Kaip server: the PipelineRun, RecurringRun and Trigger controllers, and GitOps
Applications."""

from __future__ import annotations

from typing import Any

from kaip.api.core import POD
from kaip.api.kueue import WORKLOAD
from kaip.api.pipelines import PIPELINE_RUN, RECURRING_RUN
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller, owner_keys
from kaip.pipelines.controller import PipelineRunReconciler
from kaip.pipelines.queueing import TaskFramework, runs_of_workload
from kaip.pipelines.recurring import RecurringRunReconciler


def install(server: Any) -> PipelineRunReconciler:
    """Called once by KaipServer while it adds its controllers."""
    queues = TaskFramework(server.store, EventRecorder(server.store, "kueue-job"))
    runs = PipelineRunReconciler(server.store, server.executor, EventRecorder(server.store, "kaip-pipelines"),
                                 server.home, queues=queues)
    server.manager.add(Controller("pipelinerun", runs, for_kind=PIPELINE_RUN,
                                  watches=[(POD.key, owner_keys(PIPELINE_RUN)),
                                           (WORKLOAD.key, runs_of_workload(server.store))], workers=2))
    recurring = RecurringRunReconciler(server.store, EventRecorder(server.store, "kaip-recurringrun"))
    server.manager.add(Controller("recurringrun", recurring, for_kind=RECURRING_RUN,
                                  watches=[(PIPELINE_RUN.key, owner_keys(RECURRING_RUN))], workers=1))
    from kaip.api.triggers import TRIGGER
    from kaip.pipelines.triggers import TriggerReconciler

    server.manager.add(Controller("trigger", TriggerReconciler(server.store, EventRecorder(server.store,
                                                                                             "kaip-trigger")),
                                  for_kind=TRIGGER, workers=1))
    from kaip.gitops.install import install as install_gitops

    install_gitops(server)
    return runs
