#!/usr/bin/env node
// The node peer of bench/load.py: node's `smpp` client (farhadi/node-smpp 0.5.1) driving
// submit_sm as fast as it can, the way its users do: B transceiver sessions, each keeping
// W submit_sm in flight (a new one from each response callback), for D milliseconds.
//
//   node bench/peers/node_load.js --port P [--host H] [--binds B] [--window W]
//        [--duration-ms D] [--system-id S] [--password X]
//
// The message is the same as the harness's default: a 60-character GSM text from a
// 12-digit source to a 12-digit destination (random digits), registered_delivery off.
// Prints one JSON line: {"submitted", "responses", "seconds", "msgs_per_s", "errors"}.
// NODE_PATH must reach the `smpp` package (bench/load.py sets it to tests/interop/node/node_modules).
'use strict';

const smpp = require('smpp');

function parseArgs(argv) {
	const args = {};
	for (let i = 0; i < argv.length; i += 2) {
		if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
			throw new Error('bad argument: ' + argv[i]);
		}
		args[argv[i].slice(2)] = argv[i + 1];
	}
	return args;
}

const args = parseArgs(process.argv.slice(2));
const host = args.host || '127.0.0.1';
const port = Number(args.port);
const binds = Number(args.binds || 4);
const windowSize = Number(args.window || 100);
const durationMs = Number(args['duration-ms'] || 5000);
const systemId = args['system-id'] || 'test';
const password = args.password || 'test';
const TEXT = 'hello your code is 4711 please confirm reply STOP to opt out ok';

function digits(n) {
	let s = '';
	for (let i = 0; i < n; i++) {
		s += String(Math.floor(Math.random() * 10));
	}
	return s;
}

let submitted = 0;
let responses = 0;
let errors = 0;
let started = 0;
let stopping = false;
let bound = 0;
const sessions = [];

function pump(session) {
	while (!stopping && session.inFlight < windowSize) {
		session.inFlight++;
		submitted++;
		session.submit_sm({
			source_addr_ton: 1,
			source_addr_npi: 1,
			source_addr: '44770090' + digits(4),
			dest_addr_ton: 1,
			dest_addr_npi: 1,
			destination_addr: '4479' + digits(8),
			registered_delivery: 0,
			short_message: TEXT.slice(0, 60),
		}, function (pdu) {
			session.inFlight--;
			responses++;
			if (pdu.command_status !== 0) {
				errors++;
			}
			pump(session);
		});
	}
}

function finish() {
	stopping = true;
	const seconds = (Date.now() - started) / 1000;
	process.stdout.write(JSON.stringify({
		submitted: submitted,
		responses: responses,
		errors: errors,
		seconds: seconds,
		msgs_per_s: responses / seconds,
	}) + '\n', function () {
		sessions.forEach(function (s) { s.destroy(); });
		process.exit(0);
	});
}

for (let i = 0; i < binds; i++) {
	const session = smpp.connect({url: 'smpp://' + host + ':' + port, auto_enquire_link_period: 0});
	session.inFlight = 0;
	sessions.push(session);
	session.on('error', function (err) {
		process.stderr.write('node_load: ' + err + '\n');
		process.exit(3);
	});
	session.bind_transceiver({system_id: systemId, password: password}, function (pdu) {
		if (pdu.command_status !== 0) {
			process.stderr.write('node_load: bind refused: ' + pdu.command_status + '\n');
			process.exit(3);
		}
		bound++;
		if (bound === binds) {
			started = Date.now();
			setTimeout(finish, durationMs);
			sessions.forEach(pump);
		}
	});
}
