#!/usr/bin/env python3
"""Chaos run of `labelmill worker` with clients written elsewhere (pika, confluent-kafka).

Publishes N good documents plus planted bad ones, runs workers while it kills them with SIGKILL at
random moments, restarts the broker once, (RabbitMQ) removes the results binding for a while and
restores it, (Kafka) scales 1 -> 3 -> 1 workers; reads every result and dead letter, and prints
lost (must be 0), duplicates, unexpected ids and dead letters by code as one JSON line.

Run through scripts/chaos.sh, which installs the clients in a virtual environment.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

TASKS = """
[[task]]
name = "ticket"
preset = "llama2-chat"
instruction = "Classify the ticket: {{labels}}."
answer_prefix = "Category:"
labels = ["billing", "technical", "account", "other"]
max_doc_tokens = 64
truncation = "head"
"""

BAD = [(b'{"id": "bad-json-%d", "text": ', "malformed_json"),
       (b'{"id": "bad-task-%d", "task": "nope", "text": "x"}', "unknown_task"),
       (b'{"id": "bad-empty-%d", "text": "   "}', "empty_text")]


def docs(n, seed):
    rnd = random.Random(seed)
    words = "invoice charge refund login password crash error account card app".split()
    for i in range(n):
        text = " ".join(rnd.choice(words) for _ in range(rnd.randint(5, 40)))
        yield f"d-{i}", json.dumps({"id": f"d-{i}", "text": text}).encode()


def planted(per_class):
    out = []
    for tmpl, code in BAD:
        for i in range(per_class):
            body = tmpl.replace(b"%d", str(i).encode())
            out.append((body, code))
    return out


class Workers:
    """Worker processes on one config; kill -9, restart, scale."""

    def __init__(self, binary, config, logdir):
        self.binary, self.config, self.logdir = binary, config, logdir
        self.procs = []
        self.started = 0

    def start(self):
        self.started += 1
        log = open(os.path.join(self.logdir, f"worker-{self.started}.log"), "w")
        p = subprocess.Popen([self.binary, "--threads", "1", "worker", "--config", self.config],
                             stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(p)

    def kill9(self, rnd):
        alive = [p for p in self.procs if p.poll() is None]
        if not alive:
            return False
        victim = rnd.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.procs.remove(victim)
        self.start()
        return True

    def scale(self, n):
        while len(self.procs) < n:
            self.start()
        while len(self.procs) > n:
            p = self.procs.pop()
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in self.procs]
        self.procs = []
        return codes


def write_config(args, workdir, broker_section):
    """The worker config shared by both brokers, with `broker_section` ([amqp] or [kafka])."""
    config = os.path.join(workdir, "worker.toml")
    with open(config, "w") as f:
        f.write(f"""[model]
model = "{args.model}/model.gguf"
tasks = "{workdir}/tasks.toml"
[http]
listen = "127.0.0.1:0"
[batching]
max_docs = 32
max_wait = "20ms"
max_in_flight = {args.in_flight}
[retry]
max_attempts = 3
initial_backoff = "50ms"
max_backoff = "1s"
[shutdown]
drain_deadline = "20s"
""" + broker_section)
    return config


def finish(args, workers, readers, outputs):
    """Waits until every result and planted dead letter is in (or the timeout), stops the workers
    and the readers, and tallies."""
    threads, stop = readers
    sent, results, dead, bad = outputs
    deadline = time.time() + args.timeout
    while time.time() < deadline and (len(set(results)) < len(sent) or len(dead) < len(bad)):
        time.sleep(1)
    time.sleep(3)
    codes = workers.stop()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    planted_codes = {}
    for _, code in bad:
        planted_codes[code] = planted_codes.get(code, 0) + 1
    report = tally(sent, results, dead, planted_codes)
    report.update({"worker_exit_codes": codes, "in_flight_bound": args.in_flight})
    return report


def tally(sent, results, dead, planted_codes):
    seen = {}
    for rid in results:
        seen[rid] = seen.get(rid, 0) + 1
    sent_set = set(sent)
    codes = {}
    for code in dead:
        codes[code] = codes.get(code, 0) + 1
    return {
        "sent": len(sent),
        "lost": sorted(set(sent) - set(seen))[:20],
        "lost_count": len(sent_set - set(seen)),
        "duplicates": sum(c - 1 for c in seen.values()),
        "unexpected": sorted(set(seen) - sent_set)[:20],
        "dead_letters_by_code": codes,
        "planted_by_code": planted_codes,
    }


def run_amqp(args, workdir, rnd):
    import pika

    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f")
    tag = f"chaos-{os.getpid()}"
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    # Durable exchange and queues, persistent messages: they survive the broker restart.
    ch.exchange_declare(tag, "direct", durable=True)
    for q in ["input", "results", "dead"]:
        ch.queue_declare(f"{tag}.{q}", durable=True, arguments={"x-expires": 1800000})
        if q != "input":
            ch.queue_bind(f"{tag}.{q}", tag, q)
    config = write_config(args, workdir, f"""[amqp]
uri = "amqp://guest:guest@127.0.0.1:5672/%2f"
inputs = [{{ queue = "{tag}.input", task = "ticket" }}]
exchange = "{tag}"
results_routing_key = "results"
dead_letter_routing_key = "dead"
reconnect_delay = "500ms"
""")
    sent = []
    persistent = pika.BasicProperties(delivery_mode=2)
    for doc_id, body in docs(args.docs, args.seed):
        ch.basic_publish("", f"{tag}.input", body, properties=persistent)
        sent.append(doc_id)
    bad = planted(args.bad)
    for b, _ in bad:
        ch.basic_publish("", f"{tag}.input", b, properties=persistent)
    conn.close()

    results, dead, stop = [], [], threading.Event()

    def reader(queue, out, key):
        # Reconnects across the broker restart. An ack lost in the restart makes the broker
        # deliver that output again: counted as a duplicate here, on the safe side.
        while not stop.is_set():
            try:
                c = pika.BlockingConnection(params)
                cch = c.channel()
                cch.basic_qos(prefetch_count=500)
                for method, _, body in cch.consume(queue, inactivity_timeout=0.5):
                    if stop.is_set():
                        break
                    if method is None:
                        continue
                    out.append(key(json.loads(body)))
                    cch.basic_ack(method.delivery_tag)
                c.close()
            except Exception:  # the broker restarting
                time.sleep(1)

    threads = [threading.Thread(target=reader, args=(f"{tag}.results", results, lambda v: v["id"])),
               threading.Thread(target=reader, args=(f"{tag}.dead", dead, lambda v: v["error"]["code"]))]
    for t in threads:
        t.start()
    workers = Workers(args.labelmill, config, workdir)
    workers.scale(args.workers)
    events = []
    start = time.time()
    plan = ["kill"] * args.kills + ["unbind"] + ([] if args.no_broker_restart else ["broker"])
    rnd.shuffle(plan)
    for event in plan:
        time.sleep(rnd.uniform(2, 6))
        if event == "kill":
            workers.kill9(rnd)
        elif event == "broker":
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
            time.sleep(5)
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        elif event == "unbind":
            c = pika.BlockingConnection(params)
            c.channel().queue_unbind(f"{tag}.results", tag, "results")
            c.close()
            time.sleep(args.route_down)
            c = pika.BlockingConnection(params)
            c.channel().queue_bind(f"{tag}.results", tag, "results")
            c.close()
        events.append((round(time.time() - start, 1), event, len(set(results))))
    report = finish(args, workers, (threads, stop), (sent, results, dead, bad))
    report.update({"broker": "rabbitmq", "events": events,
                   "seconds": round(time.time() - start, 1)})
    return report


def run_kafka(args, workdir, rnd):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = f"chaos-{os.getpid()}"
    # The mock keeps about 5 MiB per partition: six partitions hold 10,000 results.
    partitions = [("input", 6), ("results", 6), ("dead", 1)]
    mock = None
    if args.kafka == "mock":
        mock = subprocess.Popen([args.mock_kafka] + [f"{tag}.{t}:{p}" for t, p in partitions],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        brokers = mock.stdout.readline().strip()
    else:
        brokers = "127.0.0.1:9092"
        admin = AdminClient({"bootstrap.servers": brokers})
        topics = [NewTopic(f"{tag}.{t}", num_partitions=p, replication_factor=1) for t, p in partitions]
        for f in admin.create_topics(topics).values():
            f.result()
    config = write_config(args, workdir, f"""[kafka]
brokers = "{brokers}"
group_id = "{tag}"
inputs = [{{ topic = "{tag}.input", task = "ticket" }}]
results_topic = "{tag}.results"
dead_letter_topic = "{tag}.dead"
""")
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    sent = []
    for doc_id, body in docs(args.docs, args.seed):
        producer.produce(f"{tag}.input", body, key=doc_id)
        producer.poll(0)
        sent.append(doc_id)
    bad = planted(args.bad)
    for b, _ in bad:
        producer.produce(f"{tag}.input", b)
    producer.flush(60)

    results, dead, stop = [], [], threading.Event()

    def reader(topic, out, key):
        c = Consumer({"bootstrap.servers": brokers, "group.id": f"{tag}-reader-{topic}",
                      "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        while not stop.is_set():
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            out.append(key(json.loads(m.value())))
        c.close()

    threads = [threading.Thread(target=reader, args=(f"{tag}.results", results, lambda v: v["id"])),
               threading.Thread(target=reader, args=(f"{tag}.dead", dead, lambda v: v["error"]["code"]))]
    for t in threads:
        t.start()
    workers = Workers(args.labelmill, config, workdir)
    workers.scale(1)
    events = []
    start = time.time()
    plan = ["kill"] * args.kills + ["scale3", "scale1"] + ([] if args.no_broker_restart else ["broker"])
    rnd.shuffle(plan)
    # 1 -> 3 -> 1: scaling down only after scaling up.
    if plan.index("scale1") < plan.index("scale3"):
        i, j = plan.index("scale1"), plan.index("scale3")
        plan[i], plan[j] = plan[j], plan[i]
    for event in plan:
        time.sleep(rnd.uniform(2, 6))
        if event == "kill":
            workers.kill9(rnd)
        elif event == "scale3":
            workers.scale(3)
        elif event == "scale1":
            workers.scale(1)
        elif event == "broker" and mock:
            mock.stdin.write("restart 3\n")
            mock.stdin.flush()
            assert mock.stdout.readline().strip() == "restarted"
        elif event == "broker":
            subprocess.run(["pkill", "-f", "tansu broker"], check=False)
            while subprocess.run(["pgrep", "-f", "tansu broker"], capture_output=True).returncode == 0:
                time.sleep(0.2)
            time.sleep(3)
            subprocess.run(["bash", "scripts/services.sh"], check=True, capture_output=True)
        events.append((round(time.time() - start, 1), event, len(set(results))))
    report = finish(args, workers, (threads, stop), (sent, results, dead, bad))
    report.update({"broker": "kafka", "kafka": args.kafka, "events": events,
                   "seconds": round(time.time() - start, 1)})
    if mock:
        mock.stdin.close()
        mock.wait(30)
    else:
        # tansu logs its own panics: a run in which it crashed says nothing about labelmill.
        log = "target/test-services/tansu.log"
        panics = open(log, errors="replace").read().count("panicked at") if os.path.exists(log) else 0
        report["broker_panics_in_log"] = panics
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", choices=["amqp", "kafka"], required=True)
    ap.add_argument("--labelmill", default="target/release/labelmill")
    ap.add_argument("--model", required=True, help="directory with model.gguf (labelmill tiny-model)")
    ap.add_argument("--docs", type=int, default=10000)
    ap.add_argument("--bad", type=int, default=3, help="planted bad inputs per class")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="RabbitMQ workers")
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--route-down", type=float, default=30.0, help="seconds without the results binding")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-broker-restart", action="store_true", help="leave the broker up")
    ap.add_argument("--kafka", choices=["mock", "tansu"], default="mock",
                    help="mock: librdkafka's mock broker in its own process (examples/mock_kafka.rs); "
                         "tansu: the one at 127.0.0.1:9092 (tansu 0.6.0 panics in group rebalances)")
    ap.add_argument("--mock-kafka", default="target/release/examples/mock_kafka")
    ap.add_argument("--keep", help="keep configs and worker logs in this directory")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labelmill-chaos-") as tmp:
        workdir = args.keep or tmp
        with open(os.path.join(workdir, "tasks.toml"), "w") as f:
            f.write(TASKS)
        run = run_amqp if args.broker == "amqp" else run_kafka
        report = run(args, workdir, rnd)
    print(json.dumps(report))
    expected = report["planted_by_code"]
    ok = report["lost_count"] == 0 and not report["unexpected"] and report["dead_letters_by_code"] == expected
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
