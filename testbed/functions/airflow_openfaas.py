"""Apache Airflow's OpenFaaS hook (apache-airflow-providers-openfaas, unchanged) against
Conveyor's gateway: checks that a function does not exist, deploys it, waits until it exists,
calls it synchronously and asynchronously, updates it, and sees a second deployment refused.
Run by control/tests/gateway.rs with target/py-airflow's python.

Usage: airflow_openfaas.py GATEWAY_URL FUNCTION
"""
import json
import os
import sys
import time

url, name = sys.argv[1], sys.argv[2]
# The hook reads the gateway's address from its Airflow connection (here from the
# environment: no Airflow database needed).
os.environ["AIRFLOW_CONN_OPEN_FAAS_DEFAULT"] = json.dumps(
    {"conn_type": "openfaas", "host": url})

from airflow.providers.common.compat.sdk import AirflowException  # noqa: E402
from airflow.providers.openfaas.hooks.openfaas import OpenFaasHook  # noqa: E402

hook = OpenFaasHook(function_name=name)
assert not hook.does_function_exist(), "exists before it was deployed"
hook.deploy_function(False, {"service": name, "envProcess": "tr a-z A-Z"})
deadline = time.time() + 30
while not hook.does_function_exist():
    assert time.time() < deadline, "not there 30 s after its deployment"
    time.sleep(0.2)
# The hook raises on any answer that is not 2xx; the function may take a moment to reach
# every member after it is listed.
deadline = time.time() + 30
while True:
    try:
        hook.invoke_function({"text": "hello"})
        break
    except AirflowException:
        assert time.time() < deadline, "not callable 30 s after its deployment"
        time.sleep(0.2)
hook.invoke_async_function({"text": "later"})
hook.update_function({"service": name, "envProcess": "rev"})
try:
    hook.deploy_function(False, {"service": name, "envProcess": "cat"})
    raise SystemExit("a second deployment of the same function was accepted")
except AirflowException:
    pass
print("airflow hook: ok")
