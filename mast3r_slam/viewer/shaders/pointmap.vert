// Attribute-less pointmap draw: one vertex per (strided) pixel; everything comes from textures.
// renderer.py prepends "#version 330" and, for the surfel program, "#define SURFEL".
uniform sampler2D tex_X;     // RGB32F [H, W]: points in the frame's own camera (OpenCV axes)
uniform sampler2D tex_C;     // R32F   [H, W]: confidence
uniform sampler2D tex_rgb;   // RGB8   [H, W]: image colours
uniform sampler2D tex_mask;  // R8     [H, W]: dynamic mask (1 = moving), 1x1 zero when unused
uniform sampler2D tex_cmap;  // RGB8   [1, 256]: depth colormap

uniform ivec2 size;          // (W, H) of the pointmap
uniform int stride;          // draw every stride-th pixel in x and y
uniform int border;          // skip pixels this close to the image border
uniform float conf_threshold;
uniform mat4 m_modelview;    // view * model; model = Sim(3) T_WC with its scale
uniform mat4 m_proj;
uniform int color_mode;      // 0: image colour, 1: depth colormap
uniform vec2 depth_range;    // z range mapped onto the colormap
uniform int use_mask;
uniform vec3 mask_color;
uniform float point_size;    // point mode: diameter in pixels
uniform float surfel_scale;  // surfel mode: radius / neighbour spacing
uniform float depth_bias;    // relative pull towards the eye (the current frame wins over a coinciding keyframe)

out vec3 v_pos;      // view space
out vec3 v_normal;   // view space, facing the eye
out vec3 v_color;
out float v_radius;  // view-space surfel radius
out float v_valid;

vec3 fetch_X(ivec2 p) { return texelFetch(tex_X, p, 0).xyz; }

void main() {
    int cols = (size.x + stride - 1) / stride;
    ivec2 px = ivec2(gl_VertexID % cols, gl_VertexID / cols) * stride;
    vec3 X = fetch_X(px);
    float c = texelFetch(tex_C, px, 0).r;
    bool inside = px.x >= border && px.y >= border && px.x < size.x - border && px.y < size.y - border;
    bool finite = !any(isnan(X)) && !any(isinf(X)) && dot(X, X) > 0.0;
    bool ok = inside && finite && c >= conf_threshold;

    // neighbours one pixel right and down (mirrored at the last column / row)
    bool last_col = px.x + 1 >= size.x;
    bool last_row = px.y + 1 >= size.y;
    ivec2 pr = ivec2(last_col ? px.x - 1 : px.x + 1, px.y);
    ivec2 pd = ivec2(px.x, last_row ? px.y - 1 : px.y + 1);
    vec3 dr = (fetch_X(pr) - X) * (last_col ? -1.0 : 1.0);
    vec3 dd = (fetch_X(pd) - X) * (last_row ? -1.0 : 1.0);

    mat3 mv3 = mat3(m_modelview);
    vec4 pv = m_modelview * vec4(X, 1.0);
    pv.xyz *= 1.0 - depth_bias;  // along the viewing ray: same pixel, slightly nearer
    vec3 n = mv3 * cross(dd, dr);
    float ln = length(n);
    n = ln > 0.0 ? n / ln : vec3(0.0, 0.0, 1.0);
    if (dot(n, -pv.xyz) < 0.0) n = -n;
    float a = length(mv3 * dr);
    float b = length(mv3 * dd);
    float spacing = max(min(a, b), 0.25 * max(a, b)) * float(stride);

    vec3 col;
    if (color_mode == 1) {
        float t = clamp((X.z - depth_range.x) / max(depth_range.y - depth_range.x, 1e-6), 0.0, 1.0);
        col = texture(tex_cmap, vec2(t, 0.5)).rgb;
    } else {
        col = texelFetch(tex_rgb, px, 0).rgb;
    }
    if (use_mask != 0 && texelFetch(tex_mask, px, 0).r > 0.5) col = mix(col, mask_color, 0.7);

    v_pos = pv.xyz;
    v_normal = n;
    v_color = col;
    v_radius = surfel_scale * spacing;
    v_valid = ok ? 1.0 : 0.0;
#ifdef SURFEL
    gl_Position = pv;
#else
    gl_Position = ok ? m_proj * pv : vec4(0.0, 0.0, 2.0, 1.0);  // outside the clip volume
    gl_PointSize = point_size;
#endif
}
