"""HTTP routes of the OpenAI-compatible `/v1` API: thin, declarative, delegating to OpenAIService."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from control_plane.accounts.auth import Principal
from control_plane.openai import schemas as oa
from control_plane.openai.service import OpenAIService


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @post("/chat/completions", status_code=200, summary="Create a chat completion (OpenAI-compatible)",
          description="With stream: true, OpenAI's chunk stream (text/event-stream, ending in data: [DONE]); "
                      "closing it cancels the job.",
          responses={200: ResponseSpec(data_container=oa.ChatCompletion, description="The completion")})
    async def chat_completions(self, request: Request, data: JSONBody[oa.ChatCompletionRequest],
                               principal: NamedDependency[Principal],
                               openai_api: NamedDependency[OpenAIService]) -> Response[oa.ChatCompletion] | Stream:
        return await openai_api.chat(principal, data, request_id=request.scope.get("request_id"),
                                     idempotency_key=request.headers.get("idempotency-key"))

    @post("/embeddings", status_code=200, summary="Create embeddings (OpenAI-compatible)")
    async def embeddings(self, request: Request, data: JSONBody[oa.EmbeddingRequest],
                         principal: NamedDependency[Principal],
                         openai_api: NamedDependency[OpenAIService]) -> Response[oa.EmbeddingList]:
        return await openai_api.embeddings(principal, data, request_id=request.scope.get("request_id"))

    @get("/models", summary="List the models online nodes serve (OpenAI-compatible)")
    async def list_models(self, principal: NamedDependency[Principal],
                          openai_api: NamedDependency[OpenAIService]) -> oa.ModelList:
        return openai_api.models()

    @get("/models/{model_id:path}", summary="Retrieve a model (OpenAI-compatible)")
    async def get_model(self, model_id: FromPath[str], principal: NamedDependency[Principal],
                        openai_api: NamedDependency[OpenAIService]) -> oa.Model:
        return openai_api.model(model_id.lstrip("/"))
