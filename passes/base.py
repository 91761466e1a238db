"""The pass interface every graph pass follows (after onnx-ir's passes).

A pass checks its preconditions, then maps a model to a new model (or to an
analysis result) without mutating its input, so passes compose and a failed
pass leaves the caller's model intact.
"""
from __future__ import annotations

import abc
from typing import Generic, TypeVar

import onnx

R = TypeVar("R")


class Pass(abc.ABC, Generic[R]):
    """One graph transformation or analysis; ``pass_(model)`` runs it."""

    def requires(self, model: onnx.ModelProto) -> None:
        """Raise InputError when ``model`` does not meet this pass's preconditions."""

    @abc.abstractmethod
    def call(self, model: onnx.ModelProto) -> R:
        """Run the pass; must not modify ``model``."""

    def __call__(self, model: onnx.ModelProto) -> R:
        self.requires(model)
        return self.call(model)
