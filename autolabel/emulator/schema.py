"""The executable schema: ``schema.graphql`` with its scalars parsed and every resolver of
:mod:`autolabel.emulator.resolvers` attached (graphql-core)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any, cast

import graphql

from autolabel.emulator.resolvers import (
    FIELD_RESOLVERS,
    MUTATION_RESOLVERS,
    QUERY_RESOLVERS,
    Resolver,
)


def schema_sdl() -> str:
    """The SDL text of the emulated API."""
    return resources.files("autolabel.emulator").joinpath("schema.graphql").read_text("utf-8")


def _parse_uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise graphql.GraphQLError(f"{value!r} is not a UUID") from None


def _parse_datetime(value: Any) -> str:
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise graphql.GraphQLError(f"{value!r} is not an ISO-8601 date-time") from None
    return str(value)


def _serialize_json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _bind_scalar(
    schema: graphql.GraphQLSchema,
    name: str,
    *,
    parse: Callable[[Any], Any] | None = None,
    serialize: Callable[[Any], Any] | None = None,
) -> None:
    # graphql-core 3.2 calls parse_value/serialize, 3.3 coerce_input_value/coerce_output_value.
    scalar = cast(graphql.GraphQLScalarType, schema.type_map[name])
    if parse is not None:
        for attribute in ("parse_value", "coerce_input_value"):
            if hasattr(scalar, attribute):
                setattr(scalar, attribute, parse)
    if serialize is not None:
        for attribute in ("serialize", "coerce_output_value"):
            if hasattr(scalar, attribute):
                setattr(scalar, attribute, serialize)


def _bind_scalars(schema: graphql.GraphQLSchema) -> None:
    _bind_scalar(schema, "UUID", parse=_parse_uuid)
    _bind_scalar(schema, "DateTime", parse=_parse_datetime)
    _bind_scalar(schema, "JSONString", serialize=_serialize_json)


def _set(schema: graphql.GraphQLSchema, type_name: str, field: str, resolver: Resolver) -> None:
    owner = cast(graphql.GraphQLObjectType, schema.type_map[type_name])
    owner.fields[field].resolve = resolver


def build_executable_schema() -> graphql.GraphQLSchema:
    """The schema with every resolver attached (build once per server)."""
    schema = graphql.build_schema(schema_sdl())
    _bind_scalars(schema)
    for name, resolver in QUERY_RESOLVERS.items():
        _set(schema, "Query", name, resolver)
    for name, resolver in MUTATION_RESOLVERS.items():
        _set(schema, "Mutation", name, resolver)
    for (owner, field), resolver in FIELD_RESOLVERS.items():
        _set(schema, owner, field, resolver)
    return schema
