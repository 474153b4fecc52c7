//! Integration tests: the real server on a random loopback port, over real HTTP and WebSocket.

mod abandoned;
mod bots;
mod builtin;
mod compat_webhooks;
mod durability;
mod egress_delivery;
mod files;
mod helpers;
mod limits;
mod llama;
mod moderation;
mod moderation_hooks;
mod moderation_replies;
mod nim;
mod provider_egress;
mod realtime;
mod rest;
mod sendbird;
mod sendbird_bots;
mod sendbird_channels;
mod sendbird_sdk;
mod sendbird_webhooks;
mod upload_limits;
mod web;
mod webhook_outbox;
