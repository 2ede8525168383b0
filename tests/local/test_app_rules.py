"""The local bus gets the app's own rules, and the dispatcher plays Lambda with them."""

from __future__ import annotations

import json
import time

from chalice import Chalice, Rate

from breedline.local.aws import Dispatcher, install_app_rules


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
