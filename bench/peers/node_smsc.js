#!/usr/bin/env node
// The node peer of bench/carrier.py: a minimal SMSC written with node's `smpp` package
// (farhadi/node-smpp 0.5.1) doing the same work as `smsc carrier` on the bench profile:
// accept binds (test/test), answer every submit_sm with a submit_sm_resp carrying a new
// hex message id, and when the submit asks for a receipt (registered_delivery & 3) send
// at once a receipt deliver_sm (esm_class 0x04, SMPP 3.4 Appendix B text, TLVs
// receipted_message_id and message_state = DELIVERED), the way node-smpp's users write a
// server. Also: enquire_link, unbind. deliver_sm_resp is consumed by the session.
//
//   node bench/peers/node_smsc.js [--port P] [--host H]
//
// Prints the port once it listens ("listening <port>"), serves until SIGTERM.
// TCP_NODELAY is set on every socket (as ours does), so Nagle does not hold receipts back.
// NODE_PATH must reach the `smpp` package (bench/carrier.py sets it).
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
const port = Number(args.port || 0);

let nextId = 0;

function pad2(n) {
	return n < 10 ? '0' + n : String(n);
}

function smppDate(d) {  // YYMMDDhhmm, as in Appendix B
	return pad2(d.getUTCFullYear() % 100) + pad2(d.getUTCMonth() + 1) + pad2(d.getUTCDate()) +
		pad2(d.getUTCHours()) + pad2(d.getUTCMinutes());
}

function text(pdu) {
	const m = pdu.short_message;
	if (!m) {
		return '';
	}
	if (typeof m === 'string') {
		return m;
	}
	if (m.message !== undefined) {
		return String(m.message);
	}
	return String(m);
}

const server = smpp.createServer(function (session) {
	session.socket.setNoDelay(true);
	session.on('error', function () { session.close(); });
	function bind(pdu) {
		if (pdu.system_id !== 'test' || pdu.password !== 'test') {
			session.send(pdu.response({command_status: smpp.ESME_RBINDFAIL}));
			session.close();
			return;
		}
		session.send(pdu.response({system_id: 'nodesmsc'}));
	}
	session.on('bind_transceiver', bind);
	session.on('bind_transmitter', bind);
	session.on('bind_receiver', bind);
	session.on('enquire_link', function (pdu) { session.send(pdu.response()); });
	session.on('unbind', function (pdu) {
		session.send(pdu.response());
		session.close();
	});
	session.on('submit_sm', function (pdu) {
		const id = (nextId++).toString(16).padStart(16, '0');
		session.send(pdu.response({message_id: id}));
		if ((pdu.registered_delivery & 3) === 0) {
			return;
		}
		const now = smppDate(new Date());
		const body = 'id:' + id + ' sub:001 dlvrd:001 submit date:' + now + ' done date:' + now +
			' stat:DELIVRD err:000 text:' + text(pdu).slice(0, 20);
		session.deliver_sm({
			source_addr_ton: pdu.dest_addr_ton,
			source_addr_npi: pdu.dest_addr_npi,
			source_addr: pdu.destination_addr,
			dest_addr_ton: pdu.source_addr_ton,
			dest_addr_npi: pdu.source_addr_npi,
			destination_addr: pdu.source_addr,
			esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
			short_message: body,
			receipted_message_id: id,
			message_state: smpp.MESSAGE_STATE.DELIVERED,
		});
	});
});

server.listen(port, host, function () {
	process.stdout.write('listening ' + server.address().port + '\n');
});

process.on('SIGTERM', function () { process.exit(0); });
