"""Schemas for the custom resources the optional components use, which kubernetes-validate does not ship:
the Prometheus Operator's ServiceMonitor and Strimzi's KafkaTopic. Written for the fields we set, each
typed as the operators' CRDs type it, and strict (an unknown or misspelt field fails), so the
components are checked offline as strictly as the built-in kinds."""

from __future__ import annotations

import jsonschema

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = _object(
    {
        "name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    ("name", "namespace"),
)
RELABELING = _object(
    {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {"type": "string"},
    }
)
SERVICE_MONITOR = _object(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": _object(
            {
                "jobLabel": {"type": "string"},
                "selector": _object({"matchLabels": STRING_MAP}),
                "namespaceSelector": _object({"any": {"type": "boolean"}, "matchNames": {"type": "array"}}),
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                            "scrapeTimeout": {"type": "string"},
                            "relabelings": {"type": "array", "items": RELABELING},
                        },
                        ("port",),
                    ),
                },
            },
            ("selector", "endpoints"),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)
KAFKA_TOPIC = _object(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaTopic"},
        "metadata": METADATA,
        "spec": _object(
            {
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean"]}},
                "topicName": {"type": "string"},
            }
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)
SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "KafkaTopic": KAFKA_TOPIC}


def validate(o: dict) -> None:
    """Raises jsonschema.ValidationError; KeyError for a custom kind without a schema here."""
    jsonschema.validate(o, SCHEMAS[o["kind"]])
