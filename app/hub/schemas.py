from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field


class PullCreate(BaseModel):
    # a Hub model id, org/name
    model: Annotated[str, Field(min_length=1, max_length=255)]
    # a branch, a tag or a commit sha; pinned to its commit when the pull starts
    revision: Annotated[str, Field(min_length=1, max_length=255)] = "main"
