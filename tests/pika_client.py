"""Submit a job with pika and wait for its result on the results exchange.

Any AMQP client can use the fleet: this one publishes to the `<prefix>.jobs.submit` exchange,
which routes to the `<prefix>.jobs` queue (persistent, with publisher confirms, mandatory; a
client account may publish nowhere else) and reads the result from an exclusive queue bound to the
`<prefix>.results` topic exchange with the job id as routing key.

usage: pika_client.py PREFIX JOB_FILE [TIMEOUT_S]   (prints the result JSON)
RabbitMQ is STARKSCALE_AMQP_URL (default: guest on loopback).
"""

import json
import os
import sys

import pika


def main() -> int:
    prefix, job_file = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 300.0
    with open(job_file, "rb") as f:
        body = f.read()
    job_id = json.loads(body)["job_id"]

    url = os.environ.get("STARKSCALE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    params = pika.URLParameters(url)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    results = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue=results, exchange=f"{prefix}.results", routing_key=job_id)
    channel.basic_publish(
        exchange=f"{prefix}.jobs.submit",
        routing_key="",
        body=body,
        properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        mandatory=True,
    )
    for method, _properties, payload in channel.consume(results, inactivity_timeout=timeout):
        if method is None:
            print(f"no result for {job_id} within {timeout}s", file=sys.stderr)
            return 1
        channel.basic_ack(method.delivery_tag)
        print(payload.decode())
        break
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
