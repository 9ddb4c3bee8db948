//! Tracepoint record layouts, from tracefs `format` files: the kernel describes each field's
//! offset there, so nothing about a record is assumed.

use std::path::Path;

const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Offset of `field` in `category:name`'s record, from its format file.
pub fn field_offset(category: &str, name: &str, field: &str) -> Option<u32> {
    ROOTS.iter().find_map(|r| {
        let text =
            std::fs::read_to_string(Path::new(r).join("events").join(category).join(name).join("format")).ok()?;
        parse_field_offset(&text, field)
    })
}

/// `field:<type> <field>;\toffset:N;\tsize:M;...` → N. The name is the last word before `;`
/// (array suffixes such as `[16]` stripped).
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|l| {
        let l = l.trim();
        let decl = l.strip_prefix("field:")?.split(';').next()?;
        let last = decl.split_whitespace().last()?;
        let fname = last.split('[').next()?;
        if fname != field {
            return None;
        }
        let off = l.split(';').find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::parse_field_offset;

    // As the kernel prints it for iommu:io_page_fault (6.x).
    const IO_PAGE_FAULT: &str = "name: io_page_fault\nID: 1234\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:__data_loc char[] device;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:__data_loc char[] driver;\toffset:12;\tsize:4;\tsigned:0;\n\tfield:u64 iova;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;\n";

    #[test]
    fn finds_data_loc_and_plain_fields() {
        assert_eq!(parse_field_offset(IO_PAGE_FAULT, "device"), Some(8));
        assert_eq!(parse_field_offset(IO_PAGE_FAULT, "driver"), Some(12));
        assert_eq!(parse_field_offset(IO_PAGE_FAULT, "iova"), Some(16));
        assert_eq!(parse_field_offset(IO_PAGE_FAULT, "flags"), Some(24));
        assert_eq!(parse_field_offset(IO_PAGE_FAULT, "dev"), None);
    }

    #[test]
    fn a_moved_field_is_found_where_it_is() {
        let moved = IO_PAGE_FAULT.replace("device;\toffset:8;", "device;\toffset:40;");
        assert_eq!(parse_field_offset(&moved, "device"), Some(40));
    }
}
