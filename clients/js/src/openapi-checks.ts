// Compile-time proof that the hand-written types match the native API's OpenAPI document, as generated into
// generated/api.ts (scripts/generate-api.mjs). Nothing here runs: `tsc` (npm run typecheck, and
// crates/webui/tests/client_js.rs under `cargo test`) fails on any drift with an error such as
//   Type '{ nickname: "missing here"; }' does not satisfy the constraint 'true'.
// naming the pair and each field that differs.
//
// Each hand-written type must have exactly its counterpart's fields, with the same optionality, and types
// that overlap (one assignable to the other: the client may name a field's values more precisely, e.g.
// `MessageType` for the document's `string`, or take it as `unknown`), and accept `null` where the document
// says a field that is always present may be null. Nested objects and arrays are compared field by field
// (optionality aside) where they occur, and strictly as pairs of their own.
// The WebSocket frames are not in the document: docs/protocol.md is their reference. Neither are query
// parameters yet (the document lists none), so the methods' query options are not checked.

import type { components } from "./generated/api.js";
import type * as rest from "./rest.js";
import type * as t from "./types.js";

type Schemas = components["schemas"];

/** The keys of T that may be absent. */
type OptionalKeys<T> = { [K in keyof T]-?: {} extends Pick<T, K> ? K : never }[keyof T];

/**
 * One type's values may be the other's: `unknown` on either side; arrays by their elements; objects by their
 * fields (names and types; their optionality is their own pair's business); anything else (maps included) by
 * assignability in either direction. `null` and absence are compared apart (Optionality, Nullability).
 */
type Overlap<A, B> = unknown extends A
  ? true
  : unknown extends B
    ? true
    : OverlapDefined<NonNullable<A>, NonNullable<B>>;

type OverlapDefined<A, B> = [A, B] extends [readonly (infer EA)[], readonly (infer EB)[]]
  ? Overlap<EA, EB>
  : [IsRecord<A>, IsRecord<B>] extends [true, true]
    ? keyof Problems<A, B, false> extends never
      ? true
      : false
    : [A] extends [B]
      ? true
      : [B] extends [A]
        ? true
        : false;

/** An object with named fields (a map with an index signature is compared by assignability). */
type IsRecord<T> = T extends readonly unknown[]
  ? false
  : T extends object
    ? string extends keyof T
      ? false
      : true
    : false;

type Optionality<H, G, K> = K extends OptionalKeys<G>
  ? K extends OptionalKeys<H>
    ? never
    : "optional in the API, required here"
  : K extends OptionalKeys<H>
    ? "required in the API, optional here"
    : never;

type Nullability<H, G, K extends keyof H & keyof G> = K extends OptionalKeys<G>
  ? never
  : null extends G[K]
    ? null extends H[K]
      ? never
      : "may be null in the API"
    : never;

/** What is wrong with field K of H against G (`never`: nothing). */
type FieldProblem<H, G, K, CompareOptionality extends boolean> = K extends keyof G
  ? K extends keyof H
    ?
        | (CompareOptionality extends true ? Optionality<H, G, K> : never)
        | (Overlap<H[K], G[K]> extends true ? never : "another type in the API")
        | Nullability<H, G, K>
    : "missing here"
  : "not in the API";

type Problems<H, G, CompareOptionality extends boolean> = {
  [K in keyof H | keyof G as FieldProblem<H, G, K, CompareOptionality> extends never ? never : K]: FieldProblem<
    H,
    G,
    K,
    CompareOptionality
  >;
};

/** `true`, or the problems spelled out field by field (so that tsc's message lists them). */
type NoProblems<P> = keyof P extends never ? true : { [K in keyof P]: P[K] };

/** `true` when H matches G: same fields, same optionality, overlapping types. */
type Matches<H, G> = NoProblems<Problems<H, G, true>>;

/** `true` when H has G's fields with overlapping types, whichever may be absent. */
type SameFields<H, G> = NoProblems<Problems<H, G, false>>;

/** `true` when A and B have the same values (for the enums the document spells out). */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

type Check<T extends true> = T;

export type OpenApiChecks = [
  // Objects (types.ts)
  Check<Matches<t.User, Schemas["UserDto"]>>,
  Check<Matches<t.Member, Schemas["MemberDto"]>>,
  Check<Matches<t.Channel, Schemas["ChannelDto"]>>,
  Check<Matches<t.Message, Schemas["MessageDto"]>>,
  Check<Matches<t.ReplyInfo, Schemas["ReplyDto"]>>,
  Check<Matches<t.FileInfo, Schemas["FileDto"]>>,
  Check<Matches<t.Bot, Schemas["BotDto"]>>,
  // One schema for the answers (every field present) and the bodies (every field defaults).
  Check<SameFields<t.BotSettings, Schemas["BotSettings"]>>,
  Check<Same<t.BotTrigger, NonNullable<Schemas["BotSettings"]["trigger"]>>>,
  Check<Matches<t.UsageRow, Schemas["UsageRow"]>>,
  Check<Matches<t.SessionToken, Schemas["SessionToken"]>>,
  // Answers (rest.ts)
  Check<Matches<rest.UserList, Schemas["UserList"]>>,
  Check<Matches<rest.ChannelList, Schemas["ChannelList"]>>,
  Check<Matches<rest.MemberList, Schemas["MemberList"]>>,
  Check<Matches<rest.MessageList, Schemas["MessageList"]>>,
  Check<Matches<rest.BotList, Schemas["BotList"]>>,
  Check<Matches<rest.UsageList, Schemas["UsageList"]>>,
  Check<Matches<rest.ProviderList, Schemas["ProviderList"]>>,
  Check<Matches<rest.ModerationRules, Schemas["RulesDto"]>>,
  Check<Matches<rest.Flagged, Schemas["FlaggedDto"]>>,
  Check<Matches<rest.FlaggedList, Schemas["FlaggedList"]>>,
  Check<Matches<rest.EndpointView, Schemas["EndpointDto"]>>,
  Check<Matches<rest.CreatedEndpoint, Schemas["CreatedEndpoint"]>>,
  Check<Matches<rest.EndpointList, Schemas["EndpointList"]>>,
  Check<Matches<rest.Attempt, Schemas["AttemptDto"]>>,
  Check<Matches<rest.AttemptList, Schemas["AttemptList"]>>,
  Check<Matches<rest.DeadLetter, Schemas["DeadLetterDto"]>>,
  Check<Matches<rest.DeadLetterList, Schemas["DeadLetterList"]>>,
  Check<Matches<rest.ReadResult, Schemas["ReadResult"]>>,
  Check<Matches<rest.ProviderName, Schemas["ProviderName"]>>,
  // Request bodies (rest.ts)
  Check<Matches<rest.NewUser, Schemas["CreateUserBody"]>>,
  Check<Matches<rest.UserPatch, Schemas["UpdateUserBody"]>>,
  Check<Matches<rest.NewChannel, Schemas["CreateChannelBody"]>>,
  Check<Matches<rest.ChannelPatch, Schemas["UpdateChannelBody"]>>,
  Check<Matches<rest.SendMessageBody, Schemas["SendMessageBody"]>>,
  Check<Matches<rest.MessagePatch, Schemas["EditMessageBody"]>>,
  Check<Matches<rest.NewBot, Schemas["CreateBotBody"]>>,
  Check<Matches<rest.BotPatch, Schemas["UpdateBotBody"]>>,
  Check<Matches<rest.NewEndpoint, Schemas["CreateEndpointBody"]>>,
  Check<Matches<rest.EndpointPatch, Schemas["UpdateEndpointBody"]>>,
  Check<Matches<rest.InviteBody, Schemas["InviteBody"]>>,
  Check<Matches<rest.ReadBody, Schemas["ReadBody"]>>,
];
