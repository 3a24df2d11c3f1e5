-- The room census of a Jitsi signalling node, in the shape of Jitsi's mod_muc_census:
-- GET /room-census on prosody's HTTP port answers
-- {"room_census": [{"room_name": "room@muc.domain", "participants": 2, "created_time": 1700000000, "leaked": false}]}.
-- jitsi-router polls it (`[[nodes]] census_url`) to learn which rooms live on the node.
-- Written for jitsi-router's demo and tests; a real node loads Jitsi's own module.
-- Like Jitsi's module before it forced a "[]" (releases still in use), it encodes a plain
-- table, which Prosody's util.json (and cjson) write as {} when empty: a node with no room
-- answers {"room_census": {}}.

local json = require "util.json";

module:depends("http");

local muc_domain = module:get_option_string("census_muc_domain", "muc." .. module.host);

local function census()
	local rooms = {};
	local host = prosody.hosts[muc_domain];
	local muc = host and host.modules.muc;
	if muc then
		for room in muc.each_room(true) do
			local participants = 0;
			for _ in room:each_occupant() do
				participants = participants + 1;
			end
			table.insert(rooms, {
				room_name = room.jid;
				participants = participants;
				created_time = math.floor(room.created or os.time());
				leaked = false;
			});
		end
	end
	return {
		status_code = 200;
		headers = { content_type = "application/json" };
		body = json.encode({ room_census = rooms });
	};
end

module:provides("http", {
	default_path = "/room-census";
	route = { ["GET"] = census; ["GET /"] = census };
});
