// Connection authentication and the `rooms` claim of a token.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  connect, connectAs, expectConnectError, fails, join, signToken, tokenFor, uniqueRoom, uniqueUser,
} from './lib.mjs';

function assertUnauthorized(error, context) {
  assert.equal(typeof error.data, 'object', `${context}: connect_error has no data: ${error.message}`);
  assert.equal(error.data?.code, 'unauthorized', `${context}: ${JSON.stringify(error.data)}`);
  assert.equal(typeof error.data.message, 'string', `${context}: data.message is not a string`);
  assert.ok(error.data.message.length > 0, `${context}: data.message is empty`);
}

test('valid token connects', async () => {
  const socket = await connectAs(uniqueUser('auth'));

  assert.equal(socket.connected, true);
});

test('missing token is rejected', async () => {
  assertUnauthorized(await expectConnectError({}), 'auth {}');
  assertUnauthorized(await expectConnectError({ token: '' }), 'empty token');
  assertUnauthorized(await expectConnectError({ token: 42 }), 'numeric token');
});

test('expired token is rejected', async () => {
  const token = tokenFor(uniqueUser('expired'), { ttlSeconds: -120 });

  assertUnauthorized(await expectConnectError({ token }), 'expired token');
});

test('forged tokens are rejected', async () => {
  const user = uniqueUser('forged');
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, name: user, roles: [], exp: now + 3600 };

  const wrongSecret = signToken(claims, 'not-the-server-secret');
  assertUnauthorized(await expectConnectError({ token: wrongSecret }), 'token signed with another secret');

  const [header, , signature] = signToken(claims).split('.');
  const otherClaims = Buffer.from(JSON.stringify({ ...claims, sub: 'admin', roles: ['admin'] })).toString('base64url');
  const tampered = `${header}.${otherClaims}.${signature}`;
  assertUnauthorized(await expectConnectError({ token: tampered }), 'token with altered claims');

  const unsignedHeader = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
  const unsigned = `${unsignedHeader}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.`;
  assertUnauthorized(await expectConnectError({ token: unsigned }), 'token with alg none');

  assertUnauthorized(await expectConnectError({ token: 'not-a-jwt' }), 'token that is not a JWT');
});

test('token without sub is rejected', async () => {
  const now = Math.floor(Date.now() / 1000);
  const token = signToken({ name: 'nobody', roles: [], exp: now + 3600 });

  assertUnauthorized(await expectConnectError({ token }), 'token without sub');
});

test('rooms claim limits joins', async () => {
  const prefix = uniqueRoom('team');
  const socket = await connectAs(uniqueUser('scoped'), { rooms: [`${prefix}-*`] });

  const allowed = await join(socket, `${prefix}-design`);
  assert.equal(allowed.room, `${prefix}-design`);

  await fails(socket, 'room:join', { room: uniqueRoom('other') }, 'forbidden');
  await fails(socket, 'room:join', { room: prefix }, 'forbidden');
  assert.equal(socket.connected, true, 'a forbidden join closed the connection');
});

test('empty rooms claim allows no room', async () => {
  const socket = await connectAs(uniqueUser('noroom'), { rooms: [] });

  await fails(socket, 'room:join', { room: uniqueRoom('any') }, 'forbidden');
  assert.equal(socket.connected, true);
});

test('display name comes from token', async () => {
  const user = uniqueUser('named');
  const room = uniqueRoom('names');
  const socket = await connect(tokenFor(user, { name: 'Ada Lovelace' }));

  const ack = await join(socket, room);

  assert.deepEqual(ack.members, [{ id: user, name: 'Ada Lovelace' }]);
});
