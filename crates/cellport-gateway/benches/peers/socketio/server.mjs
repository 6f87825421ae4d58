// The Socket.IO side of the peer_fanout comparison (`peer_fanout --server socketio` starts it):
// one server with the Redis adapter, standing where a cellport-gateway stands. A client names
// its user in the handshake's `auth` and joins that user's room; events reach it from any process
// that emits to the room through Redis (@socket.io/redis-emitter's messages).
//
//   PORT=8090 REDIS_PORT=6390 node server.mjs     (prints "listening" once it accepts)
import { createServer } from 'node:http';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';
import { Server } from 'socket.io';

const port = Number(process.env.PORT);
const redisPort = Number(process.env.REDIS_PORT);
if (!port || !redisPort || redisPort === 6379) throw new Error('PORT and a private REDIS_PORT are required');

const pub = new Redis({ host: '127.0.0.1', port: redisPort });
const sub = pub.duplicate();
const httpServer = createServer();
const io = new Server(httpServer, {
  adapter: createAdapter(pub, sub),
  transports: ['websocket'],
  serveClient: false,
});
io.use((socket, next) => {
  const user = socket.handshake.auth?.user;
  if (typeof user !== 'string' || user === '') return next(new Error('unauthorized'));
  socket.data.user = user;
  next();
});
io.on('connection', (socket) => socket.join(`user:${socket.data.user}`));
httpServer.listen(port, '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
