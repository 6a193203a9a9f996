#!/usr/bin/env python3
"""A client for aetherscale's RabbitMQ wire format, as its users' scripts speak it.

It knows nothing of cloudlet: it publishes {"command": ..., "options": {...}} to the direct exchange
(default "computing") with routing key = command, content_type application/json and
reply_to = amq.rabbitmq.reply-to, then prints every reply that arrives within --timeout seconds
(5, like the original client), one JSON document per line.

Needs only pika (Debian: apt-get install python3-pika).

Examples:
  client.py create-vm ubuntu
  client.py --timeout 2 --expect 2 list-vms
  client.py stop-vm abcdefgh --kill
  client.py raw '{"command": "list-vms"}' --routing-key list-vms
"""

import argparse
import json
import os
import sys

import pika
import pika.exceptions

REPLY_TO = 'amq.rabbitmq.reply-to'


def build_request(args):
    """Returns (routing key, body bytes) for the chosen subcommand."""
    if args.subcommand == 'raw':
        body = args.body.encode('utf-8')
        routing_key = args.routing_key
        if routing_key is None:
            try:
                routing_key = json.loads(args.body).get('command')
            except (ValueError, AttributeError):
                routing_key = None
            if not isinstance(routing_key, str):
                sys.exit('raw: give --routing-key (the body has no string "command")')
        return routing_key, body

    if args.subcommand == 'create-vm':
        options = {'image': args.image}
        if args.init_script is not None:
            with open(args.init_script, encoding='utf-8') as f:
                options['init-script'] = f.read()
        if args.public_ip:
            options['public-ip'] = True
        if args.vpn is not None:
            options['vpn'] = args.vpn
    elif args.subcommand == 'list-vms':
        options = None
    elif args.subcommand == 'stop-vm':
        options = {'vm-id': args.vm_id, 'kill': args.kill}
    else:
        options = {'vm-id': args.vm_id}

    data = {'command': args.subcommand}
    if options is not None:
        data['options'] = options
    return args.subcommand, json.dumps(data).encode('utf-8')


def send_and_collect(args, routing_key, body):
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    try:
        channel = connection.channel()
        replies = []
        stopping = {'scheduled': False}

        def stop():
            channel.stop_consuming()

        def on_reply(_channel, _method, properties, reply_body):
            replies.append((properties, reply_body))
            if args.expect and len(replies) >= args.expect and not stopping['scheduled']:
                stopping['scheduled'] = True
                if args.grace > 0:
                    # Keep listening a little: a reply more than expected is what a test wants to see.
                    connection.call_later(args.grace, stop)
                else:
                    stop()

        if not args.no_reply:
            # Direct reply-to: consume the pseudo-queue (no ack) on the channel that publishes.
            channel.basic_consume(queue=REPLY_TO, on_message_callback=on_reply, auto_ack=True)
        channel.confirm_delivery()
        properties = pika.BasicProperties(
            content_type='application/json',
            reply_to=None if args.no_reply else REPLY_TO,
            correlation_id=args.correlation_id,
        )
        try:
            channel.basic_publish(exchange=args.exchange, routing_key=routing_key, body=body,
                                  properties=properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            print(f'unroutable: no queue is bound to "{routing_key}" on exchange "{args.exchange}"',
                  file=sys.stderr)
            return 3
        if not args.no_reply:
            connection.call_later(args.timeout, stop)
            channel.start_consuming()
        for reply_properties, reply_body in replies:
            print(json.dumps(render(reply_properties, reply_body, args.properties)), flush=True)
        return 0
    finally:
        if connection.is_open:
            connection.close()


def render(properties, body, with_properties):
    try:
        document = json.loads(body)
    except ValueError:
        document = {'raw': body.decode('utf-8', 'replace')}
    if not with_properties:
        return document
    return {
        'correlation_id': properties.correlation_id,
        'content_type': properties.content_type,
        'body': document,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description='Send one aetherscale command and print the replies.')
    parser.add_argument('--url', default=os.environ.get('AETHERSCALE_AMQP_URL', 'amqp://guest:guest@localhost:5672/%2F'),
                        help='broker URL (default: $AETHERSCALE_AMQP_URL or amqp://guest:guest@localhost:5672/)')
    parser.add_argument('--exchange', default='computing', help='the direct exchange (default: computing)')
    parser.add_argument('--timeout', type=float, default=5.0, help='seconds to collect replies (default: 5)')
    parser.add_argument('--expect', type=int, default=0,
                        help='stop once this many replies arrived (0: always wait the whole --timeout)')
    parser.add_argument('--grace', type=float, default=0.0,
                        help='after the --expect-th reply, keep listening this many seconds for more')
    parser.add_argument('--correlation-id', default=None, help='send this correlation_id (echoed in replies)')
    parser.add_argument('--properties', action='store_true',
                        help='print {"correlation_id", "content_type", "body"} instead of the body alone')
    parser.add_argument('--no-reply', action='store_true', help='send without reply_to and do not wait')

    commands = parser.add_subparsers(dest='subcommand', required=True)
    create = commands.add_parser('create-vm', help='create a VM from a base image')
    create.add_argument('image')
    create.add_argument('--init-script', default=None, help='a file whose content is sent as "init-script"')
    create.add_argument('--public-ip', action='store_true')
    create.add_argument('--vpn', default=None)
    commands.add_parser('list-vms', help='every host lists its VMs')
    for name in ('start-vm', 'delete-vm'):
        sub = commands.add_parser(name)
        sub.add_argument('vm_id')
    stop = commands.add_parser('stop-vm')
    stop.add_argument('vm_id')
    stop.add_argument('--kill', action='store_true', help='kill at once, no graceful shutdown')
    raw = commands.add_parser('raw', help='send BODY verbatim (need not be JSON)')
    raw.add_argument('body')
    raw.add_argument('--routing-key', default=None, help='default: the body\'s "command"')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    routing_key, body = build_request(args)
    try:
        return send_and_collect(args, routing_key, body)
    except pika.exceptions.AMQPConnectionError as error:
        print(f'Could not connect to AMQP broker: {error!r}', file=sys.stderr)
        return 2
    except pika.exceptions.ChannelClosedByBroker as error:
        # e.g. 404: the exchange does not exist (no host has declared it yet)
        print(f'the broker refused the request: {error.reply_code} {error.reply_text}', file=sys.stderr)
        return 4


if __name__ == '__main__':
    sys.exit(main())
