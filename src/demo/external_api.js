// The demo nodes' stand-in for Jitsi Meet's external_api.js (the iframe API): enough of it to
// embed a room from another site as a real deployment's script does, so that embedding can be
// tried through the router. `new JitsiMeetExternalAPI(domain, {roomName, width, height,
// parentNode, configOverwrite, interfaceConfigOverwrite, jwt, lang})` puts an iframe of
// https://<domain>/<roomName> into `parentNode` (default: the page's body). The conference's
// commands and events are Jitsi Meet's own and are not simulated: `executeCommand` does nothing
// and no event is ever emitted.
(function () {
  'use strict';
  var frames = 0;

  function hashOf(id, options) {
    var parts = ['jitsi_meet_external_api_id=' + id];
    [['config', options.configOverwrite], ['interfaceConfig', options.interfaceConfigOverwrite]]
      .forEach(function (pair) {
        var values = pair[1] || {};
        Object.keys(values).forEach(function (key) {
          parts.push(pair[0] + '.' + key + '=' + encodeURIComponent(JSON.stringify(values[key])));
        });
      });
    return '#' + parts.join('&');
  }

  function size(value) {
    if (value === undefined) return '100%';
    return typeof value === 'number' ? value + 'px' : String(value);
  }

  function JitsiMeetExternalAPI(domain, options) {
    if (typeof options !== 'object' || options === null) {
      // The old positional form: (domain, roomName, width, height, parentNode).
      options = { roomName: arguments[1], width: arguments[2], height: arguments[3],
        parentNode: arguments[4] };
    }
    var id = frames++;
    var room = String(options.roomName || '').split('/').map(encodeURIComponent).join('/');
    var query = [];
    if (options.jwt) query.push('jwt=' + encodeURIComponent(options.jwt));
    if (options.lang) query.push('lang=' + encodeURIComponent(options.lang));
    var frame = document.createElement('iframe');
    frame.src = 'https://' + domain + '/' + room + (query.length ? '?' + query.join('&') : '')
      + hashOf(id, options);
    frame.name = 'jitsiConferenceFrame' + id;
    frame.id = frame.name;
    frame.allow = 'camera; microphone; display-capture; autoplay; clipboard-write';
    frame.allowFullscreen = true;
    frame.style.border = '0';
    frame.style.width = size(options.width);
    frame.style.height = size(options.height);
    (options.parentNode || document.body).appendChild(frame);
    this._frame = frame;
  }

  JitsiMeetExternalAPI.prototype.getIFrame = function () { return this._frame; };
  JitsiMeetExternalAPI.prototype.dispose = function () {
    if (this._frame && this._frame.parentNode) this._frame.parentNode.removeChild(this._frame);
    this._frame = null;
  };
  JitsiMeetExternalAPI.prototype.executeCommand = function () {};
  JitsiMeetExternalAPI.prototype.executeCommands = function () {};
  JitsiMeetExternalAPI.prototype.addListener = function () { return this; };
  JitsiMeetExternalAPI.prototype.on = JitsiMeetExternalAPI.prototype.addListener;
  JitsiMeetExternalAPI.prototype.addEventListener = JitsiMeetExternalAPI.prototype.addListener;
  JitsiMeetExternalAPI.prototype.removeListener = function () { return this; };
  JitsiMeetExternalAPI.prototype.off = JitsiMeetExternalAPI.prototype.removeListener;

  window.JitsiMeetExternalAPI = JitsiMeetExternalAPI;
})();
