"""The KubeRay example (examples/kuberay): valid against its schema (no Kubernetes here), a `pagoda serve`
command line that parses, and replicas that fit on the worker pods it asks for."""

from __future__ import annotations

import copy
import json
import os

import jsonschema
import pytest
import yaml

from pagoda.cli.main import build_parser

HERE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "kuberay")


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    with open(os.path.join(HERE, "pagoda-rayservice.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    with open(os.path.join(HERE, "rayservice.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_manifest_matches_the_schema(docs, validator):
    assert [d["kind"] for d in docs] == ["RayService", "Service"]
    for d in docs:
        validator.validate(d)
    broken = copy.deepcopy(docs[0])  # the schema does refuse what KubeRay would not know
    broken["spec"]["rayClusterConfig"]["workerGroupSpec"] = broken["spec"]["rayClusterConfig"].pop("workerGroupSpecs")
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(docs[0])
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert not validator.is_valid(broken)


def test_the_pagoda_command_parses_and_its_replicas_fit(docs):
    cluster = docs[0]["spec"]["rayClusterConfig"]
    (pagoda,) = [c for c in cluster["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "pagoda"]
    assert pagoda["command"] == ["pagoda"]
    args = build_parser().parse_args(pagoda["args"])
    assert args.command == "serve" and args.data_parallel_backend == "ray"
    assert args.ray_address.startswith("127.0.0.1:")  # the head's GCS, in the same pod
    # one bundle of num_threads CPUs per replica, each on a worker pod (the head offers none)
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    assert int(workers["rayStartParams"]["num-cpus"]) >= args.num_threads
    pods_needed = args.data_parallel_size // (int(workers["rayStartParams"]["num-cpus"]) // args.num_threads)
    assert workers["minReplicas"] >= pods_needed
    service = docs[1]
    assert service["spec"]["selector"].items() <= cluster["headGroupSpec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == args.port
