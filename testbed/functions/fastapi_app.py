"""A FastAPI application, run unchanged three ways by the tests (control/tests/real_http.rs):

- under uvicorn, by the `http` executor (`python fastapi_app.py`, listening on $PORT);
- as an AWS Lambda function behind API Gateway: AWS's runtime interface client
  (`python -m awslambdaric fastapi_app.handler`) runs Mangum's handler, which reads the
  API Gateway HTTP API event the `lambda` executor builds (`"event": "apigateway-v2"`);
- as a plain Lambda function (`fastapi_app.plain`), invoked with the body as its event;
- `fastapi_app.broken` raises before it answers.
"""
import os

from fastapi import FastAPI, Request, Response
from mangum import Mangum
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    count: int


@app.post("/items", status_code=201)
def make(item: Item, request: Request, response: Response):
    response.set_cookie("made", item.name)
    response.set_cookie("count", str(item.count))
    response.headers["X-Count"] = str(item.count)
    return {
        "name": item.name,
        "count": item.count,
        "query": dict(request.query_params),
        "path": request.url.path,
        "method": request.method,
        "cookies": dict(request.cookies),
        "client": request.client.host if request.client else None,
    }


@app.get("/hello/{who}")
def hello(who: str):
    return {"hello": who}


@app.get("/fail")
def fail():
    raise RuntimeError("asked to fail")


handler = Mangum(app, lifespan="off")


def plain(event, context):
    """A plain Lambda handler: echoes its event; {"fail": ...} raises."""
    if isinstance(event, dict) and "fail" in event:
        raise ValueError(event["fail"])
    return {"event": event, "request_id": context.aws_request_id,
            "function": context.function_name}


def broken(event, context):
    """A handler that fails before it answers (behind API Gateway: API Gateway's own 500)."""
    raise RuntimeError("asked to fail")


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
