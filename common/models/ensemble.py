"""Models made of members (trees, support-vector machines) as named arrays `{kind}.{i}.{field}`.

A member is a dict of arrays. Keeping members apart on the wire lets a receiver take some of a
sender's members and drop the rest without decoding the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from common.models.checks import UpdateError
from common.tensors import Arrays

Member = dict[str, np.ndarray]


@dataclass(frozen=True)
class MemberCodec:
    """How one kind of member is named and checked; `check(member, n_features, where)`."""

    kind: str
    fields: tuple[str, ...]
    check: Callable[[Member, int, str], None]

    def pack(self, members: Iterable[Mapping[str, np.ndarray]]) -> Arrays:
        """Members numbered from 0 in the given order: the union of several ensembles."""
        return {
            f"{self.kind}.{i}.{field}": member[field]
            for i, member in enumerate(members)
            for field in self.fields
        }

    def unpack(self, arrays: Mapping[str, np.ndarray], n_features: int) -> list[Member]:
        """Every member, checked; UpdateError unless the names are exactly kind.0 … kind.{n-1}."""
        count, extra = divmod(len(arrays), len(self.fields))
        if count == 0 or extra:
            raise UpdateError(
                f"expected whole {self.kind}s of tensors {list(self.fields)}, "
                f"got {len(arrays)} tensors"
            )
        members: list[Member] = []
        for i in range(count):
            try:
                member = {field: arrays[f"{self.kind}.{i}.{field}"] for field in self.fields}
            except KeyError as missing:
                raise UpdateError(
                    f"tensor {missing.args[0]!r} is missing: {self.kind}s must be numbered "
                    f"0 to {count - 1}, each with tensors {list(self.fields)}"
                ) from None
            self.check(member, n_features, f"{self.kind} {i}")
            members.append(member)
        return members

    def take(self, arrays: Mapping[str, np.ndarray], count: int) -> list[Member]:
        """Copies of the first `count` members of a checked model, owning their memory so the
        buffer the model arrived in can be freed; the other members are never touched."""
        available = len(arrays) // len(self.fields)
        return [
            {field: arrays[f"{self.kind}.{i}.{field}"].copy() for field in self.fields}
            for i in range(min(count, available))
        ]


def check_vector(member: Member, field: str, dtype: np.dtype, length: int, where: str) -> None:
    array = member[field]
    if array.dtype != dtype or array.shape != (length,):
        raise UpdateError(
            f"{where}: tensor {field!r} must be {dtype} of shape ({length},), "
            f"got {array.dtype} {array.shape}"
        )
