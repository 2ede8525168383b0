"""The local bus gets the app's own rules, and the dispatcher plays Lambda with them."""

from __future__ import annotations

import json
import time

from chalice import Chalice, Rate

from breedline.local.standins import Dispatcher, install_app_rules


def tiny_app() -> Chalice:
    app = Chalice(app_name="rules-under-test")

    @app.on_cw_event({"source": ["aws.sagemaker"], "detail-type": ["SageMaker Training Job State Change"],
                      "detail": {"TrainingJobStatus": ["Completed"], "TrainingJobName": [{"prefix": "ours-"}]}},
                     name="on_training")
    def on_training(event):
        app.seen.append((event.detail["TrainingJobName"], event.account, event.detail_type))

    @app.schedule(Rate(1, unit=Rate.MINUTES), name="tick")
    def tick(event):
        app.seen.append(("tick", event.account, event.detail_type))

    app.seen = []
    return app


def test_rules_come_from_the_decorators_and_route_only_matching_events(moto_stack):
    app = tiny_app()
    events, sqs = moto_stack.client("events"), moto_stack.client("sqs")
    routes = install_app_rules(app, events, sqs, prefix="unit")
    rule = events.describe_rule(Name="unit-on_training")
    assert json.loads(rule["EventPattern"]) == app.event_sources[0].event_pattern
    assert routes.schedules == {"tick": 60.0}
    dispatcher = Dispatcher(app, routes, sqs, "us-east-1", schedule_period=0.5, concurrency=2).start()
    try:
        def put(name: str, status: str) -> None:
            events.put_events(Entries=[{"Source": "aws.sagemaker", "DetailType": "SageMaker Training Job State Change",
                                        "Detail": json.dumps({"TrainingJobName": name, "TrainingJobStatus": status})}])

        put("ours-1", "Completed")
        put("ours-2", "InProgress")  # wrong status: no delivery
        put("foreign-1", "Completed")  # wrong prefix: no delivery
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(s[0] == "ours-1" for s in app.seen):
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        dispatcher.stop()
    jobs = [s for s in app.seen if s[0] != "tick"]
    assert jobs == [("ours-1", "123456789012", "SageMaker Training Job State Change")]
    assert ("tick", "123456789012", "Scheduled Event") in app.seen
    assert dispatcher.errors == []


def _failing_app(fail_times: int, gate=None) -> Chalice:
    app = Chalice(app_name="retries-under-test")
    app.calls = []

    @app.on_cw_event({"source": ["aws.sagemaker"], "detail-type": ["SageMaker Training Job State Change"],
                      "detail": {"TrainingJobName": [{"prefix": "retry-"}]}}, name="on_training")
    def on_training(event):
        app.calls.append(event.to_dict())
        if gate is not None:
            gate.wait(10)
        if len(app.calls) <= fail_times:
            raise RuntimeError(f"failure {len(app.calls)}")

    return app


def _put(events, name: str) -> None:
    events.put_events(Entries=[{"Source": "aws.sagemaker", "DetailType": "SageMaker Training Job State Change",
                                "Detail": json.dumps({"TrainingJobName": name, "TrainingJobStatus": "Completed"})}])


def _wait(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.05)


def _deliver_to_failing_app(moto_stack, fail_times: int, name: str, settle: float) -> tuple[Chalice, Dispatcher]:
    """One training event through the app's rule to a handler failing ``fail_times`` times; then ``settle`` s more."""
    app = _failing_app(fail_times=fail_times)
    events, sqs = moto_stack.client("events"), moto_stack.client("sqs")
    routes = install_app_rules(app, events, sqs, prefix=name)
    dispatcher = Dispatcher(app, routes, sqs, "us-east-1", concurrency=2, retry_delay=0.1).start()
    try:
        _put(events, name)
        _wait(lambda: len(app.calls) >= 3)
        time.sleep(settle)  # room for a (wrong) fourth call
    finally:
        dispatcher.stop()
    return app, dispatcher


def test_a_failing_handler_is_retried_with_the_same_event_then_succeeds(moto_stack):
    """Lambda's asynchronous invocation: the first try plus up to 2 retries, each with the event as delivered."""
    app, dispatcher = _deliver_to_failing_app(moto_stack, fail_times=2, name="retry-1", settle=0.5)
    assert len(app.calls) == 3
    assert app.calls[0] == app.calls[1] == app.calls[2]
    assert app.calls[0]["detail"]["TrainingJobName"] == "retry-1"
    assert [e[0] for e in dispatcher.errors] == ["on_training", "on_training"]


def test_a_handler_that_keeps_failing_is_dropped_after_three_attempts(moto_stack):
    app, dispatcher = _deliver_to_failing_app(moto_stack, fail_times=99, name="retry-2", settle=0.8)
    assert len(app.calls) == 3
    assert len(dispatcher.errors) == 3


def test_delivered_events_leave_the_rule_queue_while_handlers_still_run(moto_stack):
    """The rule's SQS queue is emptied at once (moto's SQS slows down with every queued message)."""
    import threading

    gate = threading.Event()
    app = _failing_app(fail_times=0, gate=gate)
    events, sqs = moto_stack.client("events"), moto_stack.client("sqs")
    routes = install_app_rules(app, events, sqs, prefix="retry-drain")
    queue = routes.queues["on_training"]
    dispatcher = Dispatcher(app, routes, sqs, "us-east-1", concurrency=1).start()
    try:
        for i in range(25):
            _put(events, f"retry-drain-{i}")

        def queue_empty() -> bool:
            attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
            return attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0"

        _wait(lambda: queue_empty() and len(app.calls) == 1)
        assert queue_empty() and len(app.calls) == 1  # one handler blocked, the other 24 waiting in its inbox
        gate.set()
        _wait(lambda: len(app.calls) == 25)
    finally:
        gate.set()
        dispatcher.stop()
    assert sorted(c["detail"]["TrainingJobName"] for c in app.calls) == sorted(f"retry-drain-{i}" for i in range(25))
    assert dispatcher.errors == []
